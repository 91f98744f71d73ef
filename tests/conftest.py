"""Shared pytest setup: CPU only, quiet TensorFlow, fast XLA compiles."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

# Test compiles dominate the suite; the speed of the compiled code does not matter here.
jax.config.update("jax_disable_most_optimizations", True)
