"""Trainers: the target model (optionally with learning loss's module) on images (`images`) or fixed
embeddings (`features`): built by `factory`, trained by `target` (the recipe; the detectors train on
it in `detector`), run by `inference`; the CSI encoder (`contrastive`, augmentations in `augment`);
the one loop they share (`loop`); MQ-Net's meta-model (`meta`); optimizers and schedules in `optim`."""
from mqnet_fast.training.features import DeviceFeatures
from mqnet_fast.training.images import DeviceImages
from mqnet_fast.training.meta import (MetaTrainConfig, MetaTrainStats, ranking_accuracy, ranking_loss,
                                      train_meta_model)
from mqnet_fast.training.factory import make_model, model_arch
from mqnet_fast.training.inference import Inference, infer
from mqnet_fast.training.target import TrainConfig, loss_prediction_loss, train_model

__all__ = ["DeviceFeatures", "DeviceImages", "Inference", "MetaTrainConfig", "MetaTrainStats", "TrainConfig", "infer",
           "make_model", "model_arch", "loss_prediction_loss", "ranking_accuracy", "ranking_loss", "train_meta_model", "train_model"]
