"""What a run directory guarantees: nothing written by a refused start, nothing unpickled but
tensors, mirrors rewritten after a crash, round 0 trained once across processes, reports that never
merge different experiments."""
import io
import json
import shutil

import pytest
import torch

from mqnet_fast.data import load_digits
from mqnet_fast.experiment import ConfigError, Experiment, store
from mqnet_fast.experiment import phases
from mqnet_fast.report import collect_runs, summarize, write_report
from mqnet_fast.io import RunFileError, read_seal, save_sealed
from testing import checkpoint_state, strip_timing, tiny_config

@pytest.fixture(scope="module")
def digits():
    return load_digits()


def tiny(**kw):
    return tiny_config(**{"strategies": ["random", "conf"], **kw})


_strip = strip_timing


class _RunsCode:
    """Unpickling this object runs code: what a malicious checkpoint would hold."""
    ran = []

    def __reduce__(self):
        return (_RunsCode.ran.append, ("unpickled",))


@pytest.mark.parametrize("sealed", [False, True])
def test_checkpoint_with_other_pickled_objects_is_refused(tmp_path, digits, sealed):
    """Neither a bare pickle nor one inside a valid seal (its checksum recomputed) is unpickled."""
    config = tiny(strategies=["random"])
    Experiment(config, tmp_path / "run", data=digits).run(stop_after_rounds=1)
    path = tmp_path / "run" / "random" / "seed0" / "checkpoint.pt"
    seal = read_seal(path, "checkpoint")
    state = checkpoint_state(path)
    state["strategy"] = {"payload": _RunsCode()}
    if sealed:
        save_sealed(path, state, seal["identity"])
    else:
        torch.save(state, path)
    with pytest.raises(RunFileError, match="holds pickled objects other than tensors.*not loaded"):
        Experiment(config, tmp_path / "run", data=digits).run()
    assert _RunsCode.ran == []


def test_round_zero_file_is_loaded_without_pickles(tmp_path, digits):
    Experiment(tiny(strategies=["random"], rounds=0), tmp_path / "run", data=digits).run()
    path = tmp_path / "run" / "round0" / "seed0" / "resnet-loss-module.pt"  # loss_module "all": every strategy
    seal = read_seal(path, "round-0 model")
    saved = torch.load(io.BytesIO(seal["data"]), weights_only=True)
    save_sealed(path, {**saved, "train_loss": _RunsCode()}, seal["identity"])
    with pytest.raises(RunFileError, match="not loaded"):
        Experiment(tiny(strategies=["conf"], rounds=0), tmp_path / "run", data=digits).run()
    assert _RunsCode.ran == []


def test_a_refused_start_writes_nothing(tmp_path, digits):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="more than the pool holds"):
        Experiment(tiny(budget=400), run_dir, data=digits)
    assert not run_dir.exists() or not any(run_dir.rglob("*"))
    Experiment(tiny(budget=12, rounds=0), run_dir, data=digits).run()  # the corrected command runs
    assert json.loads((run_dir / "experiment.json").read_text())["budget"] == 12


def test_crash_between_checkpoint_and_outputs_leaves_nothing_stale(tmp_path, digits, monkeypatch):
    config = tiny(strategies=["random"])
    whole = Experiment(config, tmp_path / "whole", data=digits).run()

    def crash_on_last_round(self, experiment, state):
        if len(state["records"]) == config.rounds + 1:
            raise KeyboardInterrupt  # killed just after the last checkpoint was written
        original(self, experiment, state)

    original = store.SingleRun.write_outputs
    monkeypatch.setattr(store.SingleRun, "write_outputs", crash_on_last_round)
    with pytest.raises(KeyboardInterrupt):
        Experiment(config, tmp_path / "cut", data=digits).run()
    monkeypatch.setattr(store.SingleRun, "write_outputs", original)
    stale = json.loads((tmp_path / "cut" / "random" / "seed0" / "metrics.json").read_text())
    assert len(stale) == config.rounds  # the mirror lags the checkpoint by one round

    Experiment(config, tmp_path / "cut", data=digits).run()  # nothing left to run; mirrors rewritten
    for name in ("metrics.json", "queries.json"):
        a = json.loads((tmp_path / "whole" / "random" / "seed0" / name).read_text())
        b = json.loads((tmp_path / "cut" / "random" / "seed0" / name).read_text())
        assert (_strip(a) == _strip(b)) if name == "metrics.json" else (a == b)
    assert _strip(json.loads((tmp_path / "cut" / "random" / "seed0" / "metrics.json").read_text())) == _strip(whole)
    rows = (tmp_path / "cut" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + config.rounds + 1


def test_round_zero_is_trained_once_across_processes(tmp_path, digits, monkeypatch):
    first = Experiment(tiny(strategies=["random"], rounds=1), tmp_path / "run", data=digits).run()
    assert (tmp_path / "run" / "round0" / "seed0" / "resnet-loss-module.pt").exists()
    trained = []
    original = phases.train
    monkeypatch.setattr(phases, "train", lambda *a, **k: trained.append(k["desc"]) or original(*a, **k))
    # a later process (a new Experiment) running another strategy of the same seed
    later = Experiment(tiny(strategies=["random", "conf"], rounds=1), tmp_path / "run", data=digits).run()
    assert trained == ["round 1 train"]  # conf's round 0 came from the file, random was done
    conf_round0 = [r for r in later if r["strategy"] == "conf" and r["round"] == 0][0]
    assert conf_round0["test_accuracy"] == first[0]["test_accuracy"]
    assert conf_round0["train_loss"] == first[0]["train_loss"]


def _run(tmp_path, name, digits, **kw):
    Experiment(tiny(strategies=["random"], rounds=1, **kw), tmp_path / name, data=digits).run()
    return tmp_path / name


def test_report_separates_experiments_that_differ_in_any_identity_field(tmp_path, digits):
    a = _run(tmp_path, "a", digits, budget=12)
    b = _run(tmp_path, "b", digits, budget=10)
    rows = summarize(collect_runs([a, b]))
    assert sorted(r["setting"] for r in rows) == ["digits 4:6 noise 0.6 budget 10", "digits 4:6 noise 0.6 budget 12"]
    assert all(r["seeds"] == 1 for r in rows)


def test_report_separates_strategy_options(tmp_path, digits):
    common = dict(strategies=["mqnet"], rounds=1, encoder_epochs=1)
    opts = dict(informativeness="conf", meta_epochs=1, meta_min_steps=2)
    Experiment(tiny(**common, options={**opts, "purity": "knn"}), tmp_path / "knn", data=digits).run()
    Experiment(tiny(**common, options={**opts, "purity": "react"}), tmp_path / "react", data=digits).run()
    rows = summarize(collect_runs([tmp_path / "knn", tmp_path / "react"]))
    assert sorted(r["strategy"] for r in rows) == ["mqnet (purity=knn)", "mqnet (purity=react)"]


def test_report_counts_a_run_reached_twice_once_and_refuses_copies(tmp_path, digits):
    a = _run(tmp_path, "a", digits)
    rows = summarize(collect_runs([a, a, tmp_path / "a" / "." ]))
    assert [r["seeds"] for r in rows] == [1]
    shutil.copytree(a, tmp_path / "copy")
    with pytest.raises(ConfigError, match="are the same run"):
        write_report([a, tmp_path / "copy"], tmp_path / "out")


def test_other_data_under_the_same_name_is_refused(tmp_path, digits):
    import dataclasses

    Experiment(tiny(strategies=["random"], rounds=0), tmp_path / "run", data=digits).run()
    images = digits.train_images.copy()
    images[0] = 255 - images[0]  # one image rewritten at the same path
    edited = dataclasses.replace(digits, train_images=images)
    with pytest.raises(ConfigError, match="holds a different experiment \\(data_digest: "):
        Experiment(tiny(strategies=["random"], rounds=0), tmp_path / "run", data=edited)
    Experiment(tiny(strategies=["conf"], rounds=0), tmp_path / "run", data=digits).run()  # the same data resumes


def test_a_truncated_checkpoint_is_refused_by_name(tmp_path, digits):
    config = tiny(strategies=["random"])
    Experiment(config, tmp_path / "run", data=digits).run(stop_after_rounds=1)
    path = tmp_path / "run" / "random" / "seed0" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RunFileError, match="checkpoint.pt' cannot be read .*delete it"):
        Experiment(config, tmp_path / "run", data=digits).run()
