"""Shared pytest setup: CPU only, quiet TensorFlow, fast XLA compiles."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Subprocess runs split the 2 test cores into devices and several run at once: a starved
# device thread must not trip XLA's 40 s collective rendezvous timeout.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_collective_call_terminate_timeout_seconds=120")

import jax  # noqa: E402

# Test compiles dominate the suite; the speed of the compiled code does not matter here.
jax.config.update("jax_disable_most_optimizations", True)
