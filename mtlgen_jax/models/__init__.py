"""Flax Linen modules: the U-Net backbone, task heads, the multi-task model."""

from mtlgen_jax.models.multitask import MultiTaskModel, TaskHead
from mtlgen_jax.models.unet import UNet

__all__ = ["MultiTaskModel", "TaskHead", "UNet"]
