"""Where the default train step's time goes on this machine (XLA:CPU), from a profiler trace.

    python bench/profile_step.py [--json PATH] [--steps 3] [--top 15]

Traces ``--steps`` steps with ``jax.profiler``, then attributes every executed
XLA thunk (fusion, convolution, copy, while-loop body op ...) to a part of
the step through the compiled HLO: the instruction's ``op_name`` (forward
``jvp(...)`` vs backward ``transpose(jvp(...))``) and its Python stack (the
module-level stack-frame tables of the HLO text: ``tasks/*.py`` = the
per-example degrade of every task, ``optax`` = clipping + AdamW, ...). Times
are exclusive (a while loop's time excludes its body's thunks) and summed over
XLA's worker threads, so shares are of the total thunk time, not of wall time.

Categories: model forward / backward, each split into convolutions and dots
(YNNPACK/XNNPACK fusions or plain conv/dot thunks), GroupNorm, attention
(softmax etc.), upsampling (jax.image.resize), heads and the rest
(SiLU, adds, concatenations); inputs (task degrade, noise/time draws,
selection), loss, optimizer (clip + AdamW), EMA + metrics; runtime (thunk
executor and copies without a source).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from bench import common  # noqa: E402

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+.*?\s([a-z][\w\-]*)\(", re.M)


def _operands(rest: str) -> list[str]:
    """Instruction names in an operand list (``rest`` starts after the opcode's '(')."""
    depth, end = 1, len(rest)
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            end = i
            break
    return re.findall(r"%([\w.\-]+)", rest[:end])


class HloIndex:
    """Instruction name -> (opcode, op_name, python stack files/functions, fused ops)."""

    def __init__(self, text: str):
        self.text = text
        self._tables()
        self.instr: dict[str, dict] = {}
        self.users: dict[str, list[str]] = collections.defaultdict(list)
        self.fused_ops: dict[str, set[str]] = {}  # computation name -> opcodes inside
        first_meta: dict[str, tuple[str, int | None]] = {}  # computation -> a source inside
        comp = None
        for line in text.splitlines():
            head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$", line)
            if head:
                comp = head.group(1)
                self.fused_ops[comp] = set()
                continue
            m = _INSTR.match(line)
            if not m:
                continue
            name, opcode = m.group(1), m.group(2)
            op_name = re.search(r'op_name="([^"]*)"', line)
            frame = re.search(r"stack_frame_id=(\d+)", line)
            if comp is not None:
                self.fused_ops[comp].add(opcode)
                if op_name and (comp not in first_meta or opcode in ("convolution", "dot")):
                    first_meta[comp] = (op_name.group(1), int(frame.group(1)) if frame else None)
            for operand in _operands(line[m.end():]):
                self.users[operand].append(name)
            calls = re.search(r"calls=%?([\w.\-]+)", line)
            kind = re.search(r'"kind":"(\w+)"', line)
            self.instr[name] = {
                "opcode": opcode,
                "op_name": op_name.group(1) if op_name else "",
                "frame": int(frame.group(1)) if frame else None,
                "calls": calls.group(1) if calls else None,
                "fusion_kind": kind.group(1) if kind else None,
                "computation": comp,
            }
        # Fusions made by XLA passes may carry no metadata: use their body's (its conv/dot's).
        for info in self.instr.values():
            if not info["op_name"] and info["calls"] in first_meta:
                info["op_name"], info["frame"] = first_meta[info["calls"]]

    def _table(self, name: str) -> list[str]:
        m = re.search(rf"^{name}\n(.*?)(?:\n\s*\n|\Z)", self.text, re.S | re.M)
        return m.group(1).splitlines() if m else []

    def _tables(self) -> None:
        def ids(line):
            return dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", line))

        files = {int(line.split()[0]): line.split(None, 1)[1].strip('"')
                 for line in self._table("FileNames")}
        funcs = {int(line.split()[0]): line.split(None, 1)[1].strip('"')
                 for line in self._table("FunctionNames")}
        self.locations = {}
        for line in self._table("FileLocations"):
            d = ids(line)
            self.locations[int(line.split()[0])] = (files.get(d.get("file_name_id"), "?"),
                                                   funcs.get(d.get("function_name_id"), "?"))
        self.frames = {}
        for line in self._table("StackFrames"):
            d = ids(line)
            self.frames[int(line.split()[0])] = (d.get("file_location_id"),
                                                 d.get("parent_frame_id"))

    def stack(self, frame: int | None) -> list[tuple[str, str]]:
        """(file, function) from the innermost frame outwards (parent ids are 1-based)."""
        out, seen = [], set()
        while frame and frame in self.frames and frame not in seen:
            seen.add(frame)
            loc, parent = self.frames[frame]
            out.append(self.locations.get(loc, ("?", "?")))
            frame = parent
        return out

    def is_matmul(self, info: dict) -> bool:
        if info["opcode"] in ("convolution", "dot", "custom-call"):
            return True
        if info["fusion_kind"] and ("ynn" in info["fusion_kind"] or "xnn" in info["fusion_kind"]
                                    or "onednn" in info["fusion_kind"]):
            return True
        inner = self.fused_ops.get(info["calls"] or "", set())
        return bool(inner & {"convolution", "dot"})


WGRAD = "model backward: conv/dot (weight gradients, rewritten by XLA)"


def categorize(index: HloIndex, name: str, depth: int = 0) -> str:
    info = index.instr.get(name)
    if info is None:
        return "runtime (executor, untracked)"
    if not info["op_name"] and info["frame"] is None:
        # No source: XLA made it (layout copies, weight-gradient convolutions, ...).
        if index.is_matmul(info):
            return WGRAD
        for user in index.users.get(name, [])[:4]:
            cat = categorize(index, user, depth + 1) if depth < 3 else None
            if cat == WGRAD:
                return "model backward: layout transposes feeding weight-gradient convs"
            if cat and not cat.startswith(("runtime", "layout", "other")):
                return cat
        return "layout copies/transposes (inserted by XLA)"
    files = [f for f, _ in index.stack(info["frame"])]
    funcs = [fn for _, fn in index.stack(info["frame"])]
    op = info["op_name"]
    in_model = any("/models/" in f for f in files) or "MultiTaskModel" in op
    if in_model:
        phase = "backward" if "transpose(jvp(" in op else "forward"
        if index.is_matmul(info):
            part = "conv/dot" if phase == "forward" else "conv/dot (input gradients)"
        elif any("normalization.py" in f for f in files) or "GroupNorm" in op:
            part = "GroupNorm"
        elif any("attention.py" in f for f in files):
            part = "attention (softmax, reshapes)"
        elif "resize" in op or any("image/scale.py" in f for f in files):
            part = "nearest upsample (resize)"
        elif any("TaskHead" in fn for fn in funcs) or "/head_" in op:
            part = "heads"
        else:
            part = "other (SiLU, adds, concat)"
        return f"model {phase}: {part}"
    if any("/tasks/" in f for f in files):
        return "inputs: task degrade (K per example)"
    if any("make_inputs" in fn or "assign_tasks" in fn or "example_keys" in fn for fn in funcs):
        return "inputs: noise, times, task ids, selection"
    if any("optax" in f for f in files):
        return "optimizer (clip + AdamW)"
    if any(fn in ("task_losses",) or "diffusion.py" in f for f, fn in index.stack(info["frame"])):
        return "loss"
    if any("weighting" in f for f in files):
        return "weighting"
    if any(fn.startswith("train_step") for fn in funcs):
        return "EMA + metrics + rng"
    if info["opcode"] in ("copy", "transpose") or name.startswith(("copy", "transpose")):
        return "layout copies/transposes (inserted by XLA)"
    return "other"


def exclusive_times(profile) -> tuple[dict[str, float], float]:
    """Exclusive seconds per event name on XLA worker threads; and the traced wall span."""
    per_name: dict[str, float] = collections.defaultdict(float)
    t_min, t_max = float("inf"), 0.0
    for plane in profile.planes:
        for line in plane.lines:
            if "XLA" not in line.name:
                continue
            events = sorted(((e.start_ns, e.end_ns, e.name) for e in line.events),
                            key=lambda e: (e[0], -e[1]))
            stack: list[list] = []  # [start, end, name, child_time]
            for start, end, name in events:
                while stack and stack[-1][1] <= start:
                    s, e, n, child = stack.pop()
                    per_name[n] += (e - s - child) / 1e9
                    if stack:
                        stack[-1][3] += e - s
                stack.append([start, end, name, 0.0])
                t_min, t_max = min(t_min, start), max(t_max, end)
            while stack:
                s, e, n, child = stack.pop()
                per_name[n] += (e - s - child) / 1e9
                if stack:
                    stack[-1][3] += e - s
    return per_name, (t_max - t_min) / 1e9 if t_max else 0.0


_IDLE = ("ThunkExecutor::Execute (wait for completion)",)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--config", default="default")
    p.add_argument("--steps", type=int, default=3, help="traced steps")
    p.add_argument("--top", type=int, default=15, help="most expensive thunks to list")
    p.add_argument("--trace-dir", default=None, help="keep the trace here (TensorBoard/xprof)")
    args = p.parse_args(argv)

    config = common.load_config(args.config)
    bench = common.StepBench(config, common.synthetic_info(config))
    batches = bench.device_batches(2)
    compiled = bench.compiled(batches[0])
    index = HloIndex(compiled.as_text())
    bench.run(batches, 2)  # warm-up (compiles the jitted step once)
    untraced = common.stats(bench.run(batches, args.steps))
    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="mtlgen_trace_")
    jax.profiler.start_trace(trace_dir)
    t0 = time.perf_counter()
    bench.run(batches, args.steps)
    wall = (time.perf_counter() - t0) / args.steps
    jax.profiler.stop_trace()
    path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
    per_name, _ = exclusive_times(jax.profiler.ProfileData.from_file(path))

    by_cat: dict[str, float] = collections.defaultdict(float)
    for name, secs in per_name.items():
        if name in _IDLE or name.startswith("end: "):
            continue
        by_cat[categorize(index, name)] += secs / args.steps
    total = sum(by_cat.values())
    rows = sorted(by_cat.items(), key=lambda kv: -kv[1])
    busy = total / wall  # thunk seconds per wall second: how many XLA threads work at once
    print(f"XLA threads busy on average: {busy:.2f} of {os.cpu_count()} CPUs "
          "(thunk time / wall time while traced)")
    common.print_table([[c, s * 1e3, 100 * s / total] for c, s in rows],
                       ["part of the step", "ms/step (thunk time)", "%"],
                       title=f"train step, batch {config.batch_size}: {wall * 1e3:.0f} ms/step "
                             f"wall while traced ({untraced['median_s'] * 1e3:.0f} untraced)")
    named = sorted(((n, s) for n, s in per_name.items() if n in index.instr),
                   key=lambda kv: -kv[1])[: args.top]
    common.print_table(
        [[n, s / args.steps * 1e3, categorize(index, n),
          index.instr[n]["op_name"].replace("jit(train_step)/", "")[:70]] for n, s in named],
        ["thunk", "ms/step", "category", "op_name"], title="most expensive thunks")
    grouped: dict[str, float] = collections.defaultdict(float)
    for cat, secs in by_cat.items():
        grouped[cat.split(":")[0]] += secs
    result = {
        "config": args.config,
        "batch_size": config.batch_size,
        "step_wall_s_traced": wall,
        "step_time_s_untraced": untraced,
        "thunk_seconds_per_step": total,
        "average_busy_threads": busy,
        "by_category_s": dict(rows),
        "by_group_s": dict(grouped),
        "top_thunks": [{"name": n, "s_per_step": s / args.steps,
                        "category": categorize(index, n),
                        "op_name": index.instr[n]["op_name"]} for n, s in named],
        "hlo_instructions": len(index.instr),
        "trace_dir": trace_dir,
    }
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
