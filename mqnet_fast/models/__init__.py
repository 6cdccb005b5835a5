"""Networks: the target model (CIFAR-style ResNet-18) and MQ-Net's meta-model Phi."""
from mqnet_fast.models.meta_model import MetaModel
from mqnet_fast.models.resnet import ResNet18

__all__ = ["MetaModel", "ResNet18"]
