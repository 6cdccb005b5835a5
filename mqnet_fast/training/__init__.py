"""Trainers: the target model (optionally with learning loss's module) on images (`images`) or fixed
embeddings (`features`), the CSI encoder (`contrastive`, augmentations in `augment`), MQ-Net's
meta-model; optimizers and schedules in `optim`."""
from mqnet_fast.training.features import DeviceFeatures
from mqnet_fast.training.images import DeviceImages
from mqnet_fast.training.meta import (MetaTrainConfig, MetaTrainStats, ranking_accuracy, ranking_loss,
                                      train_meta_model)
from mqnet_fast.training.target import (Inference, TrainConfig, infer, loss_prediction_loss, make_model, model_arch,
                                        train_model)

__all__ = ["DeviceFeatures", "DeviceImages", "Inference", "MetaTrainConfig", "MetaTrainStats", "TrainConfig", "infer",
           "make_model", "model_arch", "loss_prediction_loss", "ranking_accuracy", "ranking_loss", "train_meta_model", "train_model"]
