"""The experiment: configuration and validation (`config`), the open-set split (`split`), the round's
phases (`phases`), the run store (`store`) and the runner (`runner`)."""
from mqnet_fast.experiment.config import (DEFAULTS, IDENTITY, NOISE_LEVELS, ConfigError, ExperimentConfig,
                                          derive_seed, num_in_classes, parse_split)
from mqnet_fast.experiment.phases import check_selection
from mqnet_fast.experiment.runner import Experiment
from mqnet_fast.experiment.store import RunStore, records_to_csv

__all__ = ["DEFAULTS", "IDENTITY", "NOISE_LEVELS", "ConfigError", "Experiment", "ExperimentConfig", "RunStore",
           "check_selection", "derive_seed", "num_in_classes", "parse_split", "records_to_csv"]
