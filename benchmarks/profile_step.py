"""Where a steady-state frame step's time goes: a device trace, summarised.

    python benchmarks/profile_step.py [--model 0.6b-base] [--native] [--batch 1 16] [--frames 20]
        [--dtype bfloat16] [--out DIR]

For each batch size: an engine of that many busy rows is warmed up, then `--frames` frame
steps (`generation.generate_frames`, span 128, no codec) run under `jax.profiler.trace`. The
trace's device events (the GPU streams' kernels) are summarised per step: kernel count,
total kernel time, the step's wall time, and the gaps (wall time with no kernel running: launch
and host overhead, the target of fewer, larger kernels), plus the ten costliest kernel names.
On a machine without a device trace (CPU) it says so and reports the wall time only. Results
go to `benchmarks/results/<name>.json` and the raw traces under `--out`.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import time
from pathlib import Path

import numpy as np
from common import MODELS, converted, full_size_checkpoint, write_result
from generation import TEXT, jax_voice


def device_events(trace_dir: Path) -> list[dict]:
    """Complete events ("X") of the trace's device processes (names with "/device:")."""
    files = sorted(trace_dir.rglob("*.trace.json.gz"))
    if not files:
        return []
    trace = json.loads(gzip.open(files[-1]).read())
    events = trace.get("traceEvents", [])
    devices = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
               and "/device:" in str(e.get("args", {}).get("name", "")) and "CPU" not in e["args"]["name"]}
    return [e for e in events if e.get("ph") == "X" and e.get("pid") in devices and "dur" in e]


def busy_us(events: list[dict]) -> float:
    """Microseconds during which at least one kernel runs (the union of their intervals)."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events)
    total, end = 0.0, -1.0
    for start, stop in spans:
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def profile(engine, frames: int, out: Path) -> dict:
    import jax

    from qwen3tts_jax import buckets, generation

    rows = buckets.active_rows(len(engine.active_slots()), engine.num_slots)
    parts = engine.parts.for_rows(rows)

    def step():
        engine.state, o = generation.generate_frames(parts.spec, parts.weights, engine.state, 1, 128, rows)
        jax.block_until_ready(o)
    for _ in range(3):
        step()
    walls = []
    with jax.profiler.trace(str(out)):
        for _ in range(frames):
            start = time.perf_counter()
            step()
            walls.append(time.perf_counter() - start)
    wall_ms = float(np.median(walls) * 1000)
    events = device_events(out)
    if not events:
        return {"rows": rows, "wall_ms_per_step": round(wall_ms, 3), "device_trace": False}
    kernel_ms = sum(e["dur"] for e in events) / 1000 / frames
    busy_ms = busy_us(events) / 1000 / frames
    by_name = collections.Counter()
    for e in events:
        by_name[e["name"]] += e["dur"]
    return {"rows": rows, "wall_ms_per_step": round(wall_ms, 3), "device_trace": True,
            "kernels_per_step": round(len(events) / frames, 1), "kernel_ms_per_step": round(kernel_ms, 3),
            "busy_ms_per_step": round(busy_ms, 3), "gap_ms_per_step": round(wall_ms - busy_ms, 3),
            "top_kernels_ms_per_step": {k: round(v / 1000 / frames, 3) for k, v in by_name.most_common(10)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="0.6b-base", choices=sorted(MODELS))
    parser.add_argument("--native", action="store_true", help="build the checkpoint without torch")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", type=Path, default=Path("/tmp/qwen3tts-profile"))
    parser.add_argument("--name", default="profile_step")
    args = parser.parse_args()
    from qwen3tts_jax import GenerationRequest, Qwen3TTS

    tts = Qwen3TTS.from_pretrained(converted(full_size_checkpoint(args.model, native=args.native), args.dtype))
    request = GenerationRequest(TEXT, language="English", max_new_frames=10_000, **jax_voice(tts))
    result = {"model": args.model, "dtype": args.dtype, "frames": args.frames}
    for b in args.batch:
        engine = tts.batch_engine(b, max_seq_len=1024)
        for slot in range(b):
            engine.admit(slot, request)
        result[f"batch_{b}"] = profile(engine, args.frames, args.out / f"batch_{b}")
        print(b, json.dumps(result[f"batch_{b}"]), flush=True)
    write_result(args.name, result)


if __name__ == "__main__":
    main()
