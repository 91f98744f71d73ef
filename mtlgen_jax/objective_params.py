"""A task's config parameters moved from one objective to another (no JAX here: the
configs import it)."""

from __future__ import annotations

BRIDGE_ONLY = ("bridge_noise", "endpoint_fraction")  # task keys that only a bridge takes


def with_objective(task: dict, objective: str, **params) -> dict:
    """``task``'s parameters moved to ``objective`` (and ``params``): the bridge's own keys
    are dropped off the bridge, and ``sample_steps`` whenever the objective changes (a
    count chosen for one sampler, e.g. the bridge's 1-step fidelity point, would run
    another's, e.g. DDIM, at that count) and from a one-pass regression, so a config can
    re-use a task on another objective; ``relative_floor_db`` is dropped off the relative
    loss. A key given in ``params`` is always kept."""
    out = dict(task, objective=objective, **params)
    changed = task.get("objective", "diffusion") != objective
    if out.get("loss", "l2") != "relative" and "relative_floor_db" not in params:
        out.pop("relative_floor_db", None)
    for key in (BRIDGE_ONLY if objective != "bridge" else ()) + (
            ("sample_steps",) if changed or objective == "regression" else ()):
        if key not in params:
            out.pop(key, None)
    return out
