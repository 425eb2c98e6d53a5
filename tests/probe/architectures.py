"""Architectures users deploy, in small configurations, for exactness tests.

Hugging Face ``transformers`` model classes with small random configs (no torchvision):
ViT (class token, position embeddings, attention, Linear over tokens, GELU), DeiT (class
and distillation tokens), ConvNeXt (depthwise 7×7 convs, LayerNorm over channels-last
and channels-first maps, Linear over channels-last maps, layer scale); and
``efficientnet-lite-pytorch``: EfficientNet-B0 at reduced width (depthwise convs in a
'same'-padding Conv2d subclass, squeeze-excitation, SiLU) and
EfficientNet-Lite0 (ReLU6) at 32×32 (its last stages then see 1×1 maps; every layer type
is exercised, at a fraction of the cost of 224×224).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from detectors.models import LogitsOf

# ViT and DeiT at test size: two blocks of width 32 on 32x32 inputs in 8x8 patches.
SMALL_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "num_labels": 10,
}


def vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    return LogitsOf(ViTForImageClassification(ViTConfig(**SMALL_VIT)))


def deit() -> nn.Module:
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    return LogitsOf(DeiTForImageClassificationWithTeacher(DeiTConfig(**SMALL_VIT)))


def convnext() -> nn.Module:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    config = ConvNextConfig(
        num_stages=2,
        hidden_sizes=[8, 16],
        depths=[1, 2],
        patch_size=2,
        num_labels=10,
        layer_scale_init_value=0.5,  # not 1e-6: every block's branch should matter
    )
    return LogitsOf(ConvNextForImageClassification(config))


def efficientnet_b0_narrow() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(
        "efficientnet-b0",
        width_coefficient=0.25,
        depth_coefficient=0.3,
        image_size=32,
        num_classes=10,
    )


def efficientnet_lite0() -> nn.Module:
    """The served example's architecture with random weights and BatchNorm statistics.

    Not the pretrained weights: on noise inputs the pretrained model's output is nearly
    uniform, where the all-ones loss gradient C·softmax − 1 cancels, and float32 features
    of some inputs then carry ~7e-3 relative rounding error in any implementation (the
    one-sample float32 loop included); the method's exactness is what is tested here.
    """
    from detectors.examples.efficientnet import build
    from tests.probe.nets import randomise_batchnorm

    return randomise_batchnorm(build())


def swin() -> nn.Module:
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=4,
        num_labels=10,
    )
    return LogitsOf(SwinForImageClassification(config))


# name -> (factory, input shape without batch)
ARCHITECTURES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "vit": (vit, (3, 32, 32)),
    "deit": (deit, (3, 32, 32)),
    "convnext": (convnext, (3, 32, 32)),
    "efficientnet_b0_narrow": (efficientnet_b0_narrow, (3, 32, 32)),
    "efficientnet_lite0": (efficientnet_lite0, (3, 32, 32)),
}
