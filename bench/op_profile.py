"""Where a compiled TensorFlow function spends its time, op by op: TF's profiler, read back here.

    from op_profile import profile_ops, op_table
    rows, wall = profile_ops(lambda: step(), calls=5)
    print(op_table(rows, wall))

TF's profiler writes an XSpace (`*.xplane.pb`); its host plane has one line per executor thread,
where every kernel is an event named `<node name>:<kernel>` (e.g. `.../Conv2D:_MklNativeConv2D`).
Events nest (a function call holds its ops), so each event counts its *self* time: its duration
less that of the events inside it on the same line. Rows are per kernel (op type), with the share of
all ops' self time; `by="name"` lists single nodes instead, `by="scope"` model parts (G, D's frozen
features, D's head, their backward passes, the optimizers). TensorBoard's profile plugin reads the
same file but is not installed here.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

# executor bookkeeping on the op lines, not ops
SKIP = ("ExecutorState::Process", "MemoryAllocation", "MemoryDeallocation", "ExecutorDoneCallback")


@dataclass
class OpRow:
    name: str  # kernel (op type), or node name with by="name"
    seconds: float  # self time, summed over the profiled calls
    count: int  # executions


def _read_space(logdir: Path):  # noqa: ANN202 - an XSpace proto
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(logdir.rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise RuntimeError(f"the TF profiler wrote no .xplane.pb under {logdir}")
    space = xplane_pb2.XSpace()
    space.ParseFromString(files[-1].read_bytes())
    return space


def _self_times(events: list[tuple[int, int, str]]) -> list[tuple[str, int]]:
    """(name, self duration) of each event of one thread's line, (start, duration, name) sorted by start."""
    out: list[tuple[str, int]] = []
    stack: list[list] = []  # [end, name, self]
    for start, duration, name in events:
        while stack and stack[-1][0] <= start:
            end, top, own = stack.pop()
            out.append((top, own))
        if stack:
            stack[-1][2] -= duration  # the enclosing event's self time excludes this one
        stack.append([start + duration, name, duration])
    out.extend((top, own) for _, top, own in reversed(stack))
    return out


def _scope(node: str) -> str:
    """The model part a node belongs to: its first name scope, `backward <scope>` under a gradient tape."""
    parts = node.split("/")
    if parts[0] == "gradient_tape" and len(parts) > 2:
        return f"backward {parts[1]}"
    return parts[0] if len(parts) > 1 else "(top level)"


def op_rows(space, by: str = "kernel") -> list[OpRow]:  # noqa: ANN001 - an XSpace proto
    """Self time and count per kernel (or per node `name`, or per `scope`) on the host's executor
    lines, largest first.

    Each node's time is the median of its executions times their number: on a machine shared with
    other work a thread descheduled inside an op charges that op the wait, and the median of a node
    that runs once per step drops those spikes where a sum would keep them.
    """
    runs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: m.name for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            if line.name == "python":  # the eager/Python side: the calls, not the ops
                continue
            events = sorted((e.offset_ps, e.duration_ps, names[e.metadata_id]) for e in line.events)
            for name, own in _self_times(events):
                if ":" not in name or name.startswith(SKIP):
                    continue
                node, kernel = name.rsplit(":", 1)
                runs[node, kernel].append(own * 1e-12)
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for (node, kernel), times in runs.items():
        key = {"kernel": kernel, "name": node, "scope": _scope(node)}[by]
        seconds[key] += statistics.median(times) * len(times)
        counts[key] += len(times)
    return sorted((OpRow(k, seconds[k], counts[k]) for k in seconds), key=lambda r: -r.seconds)


def profile_ops(fn: Callable[[], object], calls: int = 5, by: str = "kernel") -> tuple[list[OpRow], float]:
    """Run `fn` (warmed up: compiled already) `calls` times under TF's profiler: the op rows and the
    wall seconds of those calls."""
    with tempfile.TemporaryDirectory(prefix="op-profile-") as logdir:
        tf.profiler.experimental.start(logdir)
        t0 = time.perf_counter()
        try:
            for _ in range(calls):
                fn()
        finally:
            wall = time.perf_counter() - t0
            tf.profiler.experimental.stop()
        return op_rows(_read_space(Path(logdir)), by), wall


def op_table(rows: list[OpRow], wall: float, top: int = 15, calls: int = 1) -> str:
    """A Markdown table of the `top` rows: ms per call, share of all ops' self time, count per call."""
    total = sum(r.seconds for r in rows) or 1.0
    lines = ["| op | ms per step | share | per step |", "|---|---:|---:|---:|"]
    for r in rows[:top]:
        lines.append(f"| `{r.name}` | {1e3 * r.seconds / calls:.1f} | {100 * r.seconds / total:.1f} % | "
                     f"{r.count / calls:g} |")
    rest = rows[top:]
    if rest:
        lines.append(f"| {len(rest)} other rows | {1e3 * sum(r.seconds for r in rest) / calls:.1f} | "
                     f"{100 * sum(r.seconds for r in rest) / total:.1f} % | |")
    lines.append(f"| all ops (self time: medians, summed over threads) | {1e3 * total / calls:.1f} | 100 % "
                 "| |")
    lines.append(f"| wall time of the step | {1e3 * wall / calls:.1f} | | |")
    return "\n".join(lines)
