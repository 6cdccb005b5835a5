"""Networks: the target model (CIFAR-style ResNet-18 on images, a linear or MLP head on fixed
embeddings), the loss-prediction module of learning loss, the contrastive (CSI) encoder, MQ-Net's
meta-model Phi and EOAL's detector."""
from mqnet_fast.models.encoder import ContrastiveEncoder
from mqnet_fast.models.eoal_net import EOALNet
from mqnet_fast.models.head import FeatureHead
from mqnet_fast.models.loss_prediction import LossPredictionModule
from mqnet_fast.models.meta_model import MetaModel
from mqnet_fast.models.resnet import ResNet18

__all__ = ["ContrastiveEncoder", "EOALNet", "FeatureHead", "LossPredictionModule", "MetaModel", "ResNet18"]
