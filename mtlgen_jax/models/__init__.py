"""Flax Linen modules: the U-Net and transformer backbones, task heads, the multi-task model."""

from mtlgen_jax.models.multitask import MultiTaskModel, TaskHead
from mtlgen_jax.models.unet import UNet
from mtlgen_jax.models.vit import DiT, TokenHead

__all__ = ["DiT", "MultiTaskModel", "TaskHead", "TokenHead", "UNet"]
