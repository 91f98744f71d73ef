r"""Experiments built on the library: the Δm table (`delta_m`) and the two-task toy (`toy`).

    python -m mtlgen_jax.experiments.delta_m --config configs/default.py --workdir runs/delta_m \
        --strategies ew,uw,famo,pcgrad
    python -m mtlgen_jax.experiments.toy --out toy.png

Each module keeps its logic in importable functions; its `main` only parses flags.
Submodules are not imported here, so `import mtlgen_jax.experiments` stays cheap.
"""
