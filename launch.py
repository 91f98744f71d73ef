"""mtlgen_jax entry point: flags and one library call.

    python launch.py --config configs/default.py --workdir runs/demo [--config.KEY=VALUE ...]
    python launch.py --config configs/default.py --workdir runs/demo --mode eval|sample
    python launch.py --workdir runs/demo --mode restore --task super_resolve \
        --input photo.jpg --output restored.png [--mask mask.png] [--steps N]

--mode eval|sample|restore use the workdir's config.json; --config.KEY=VALUE overrides
of the dataset and the evaluation settings apply on top of it (others are refused).

Training resumes from the latest checkpoint in --workdir when one exists.
Multi-host (TPU pods, SLURM/GPU clusters): pass --distributed (auto-detects the
cluster), or --coordinator_address/--num_processes/--process_id explicitly.
"""

from __future__ import annotations

import logging as pylogging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "restore"], "What to do.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.DEFINE_integer("sample_num", 16, "--mode sample: images per task.")
flags.DEFINE_integer("sample_steps", None, "--mode sample: sampler steps (default: the "
                     "run's: each task's sample_steps, else eval.sample_steps).")
flags.DEFINE_integer("step", None, "--mode eval|sample|restore: checkpoint step (default: "
                     "latest).")
flags.DEFINE_string("task", None, "--mode restore: the task to apply.")
flags.DEFINE_string("input", None, "--mode restore: the photo to restore (for super_resolve: "
                    "the low-resolution photo).")
flags.DEFINE_string("output", None, "--mode restore: where to write the result (an image file).")
flags.DEFINE_string("mask", None, "--mode restore, inpaint: the hole (white = missing).")
flags.DEFINE_integer("steps", None, "--mode restore: sampler steps (default: the run's: "
                     "the task's sample_steps, else eval.sample_steps).")
flags.mark_flags_as_required(["workdir"])


class _QuietLibraries(pylogging.Filter):
    """Drops INFO chatter of orbax and TFDS (their warnings and errors still show)."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        noisy = any(s in record.pathname for s in ("orbax", "tensorflow_datasets", "etils"))
        return record.levelno >= pylogging.WARNING or not noisy


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if FLAGS.mode == "train" and FLAGS.config is None:
        raise app.UsageError("--mode train needs --config (e.g. --config configs/default.py).")
    if FLAGS.mode == "restore":
        missing = [f"--{n}" for n in ("task", "input", "output") if not FLAGS[n].value]
        if missing:
            raise app.UsageError(f"--mode restore needs {', '.join(missing)}, e.g. --task "
                                 "denoise --input photo.jpg --output restored.png.")
    overrides = {}
    if FLAGS.mode != "train" and FLAGS.config is not None:
        overrides = dict(config_flags.get_override_values(FLAGS["config"]))
    # tf.data must never take accelerator memory: JAX owns the accelerators.
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    from mtlgen_jax import cpu_devices

    # CPU hosts: two JAX devices per core (up to 8) unless XLA_FLAGS says otherwise.
    if FLAGS.mode == "train":
        run_config = FLAGS.config
    else:  # inference modes run with the workdir's own config
        from mtlgen_jax import workdir as workdir_lib

        run_config = workdir_lib.load_config(FLAGS.workdir)
    cpu_devices.configure(run_config, num_processes=FLAGS.num_processes or 1)
    import jax

    explicit = FLAGS.coordinator_address or FLAGS.num_processes or FLAGS.process_id is not None
    if explicit and not FLAGS.coordinator_address:
        raise app.UsageError(
            f"--num_processes={FLAGS.num_processes} / --process_id={FLAGS.process_id} need "
            "--coordinator_address=HOST:PORT of process 0 (or use --distributed on a TPU pod "
            "or SLURM cluster, where it is detected).")
    if FLAGS.distributed or explicit:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    logging.info("JAX process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.devices()[0].platform)

    import mtlgen_jax as mg

    try:
        _run_mode(mg, overrides)
    except mg.checkpoint.CheckpointError as e:
        # The message says what to do; orbax's and TensorStore's traceback does not, and
        # their threads, left with a failed read or write, print "Event loop is closed"
        # tracebacks at interpreter exit. Everything the run writes is closed by now
        # (the loop's `finally`), so leave at once, the message last.
        logging.error("%s", e)
        logging.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        real = os.dup(2)  # silence fd 2 for every thread, then write the message last
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        os.write(real, f"error: {e}\n".encode())
        os._exit(1)


def _run_mode(mg, overrides):
    if FLAGS.mode == "train":
        mg.train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif FLAGS.mode == "eval":
        mg.cli.eval_workdir(FLAGS.workdir, step=FLAGS.step, overrides=overrides)
    elif FLAGS.mode == "sample":
        mg.cli.sample_workdir(FLAGS.workdir, step=FLAGS.step, num=FLAGS.sample_num,
                              steps=FLAGS.sample_steps, overrides=overrides)
    else:
        mg.cli.restore_file(FLAGS.workdir, task=FLAGS.task, input_path=FLAGS.input,
                            output_path=FLAGS.output, mask_path=FLAGS.mask, steps=FLAGS.steps,
                            step=FLAGS.step, overrides=overrides)


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # once, before anything starts (see the module)
    app.run(main)
