"""Device memory of a full batch with long caches, in a fresh process (so the peak is the engine's
own, not a checkpoint build's or conversion's).

    python benchmarks/memory.py DIR [--rows 16] [--max-seq-len 2048] [--steps 6]

DIR is a converted checkpoint (for example `.cache/real-0.6b-native-hf-jax-bfloat16`, which
`benchmarks/generation.py --native` leaves behind). Reports the allocator's peak and current
bytes after loading and after `--steps` engine steps (`generation.bench_long_batch`).
Accelerators only: XLA's CPU client keeps no allocator statistics.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from generation import bench_long_batch, jax_voice


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    import jax

    from qwen3tts_jax import Qwen3TTS

    device = jax.devices()[0]
    if not device.memory_stats():
        raise SystemExit(f"{device.platform} keeps no allocator statistics: run this on an accelerator")
    tts = Qwen3TTS.from_pretrained(args.model)
    loaded = device.memory_stats()
    result = bench_long_batch(tts, jax_voice(tts), args.rows, args.max_seq_len, args.steps)
    print(json.dumps({
        "model": args.model, "dtype": str(np.dtype(tts.dtype)), "device": str(device),
        "after_load_gib": {"peak": round(loaded["peak_bytes_in_use"] / 2**30, 3),
                           "in_use": round(loaded["bytes_in_use"] / 2**30, 3)},
        **result}, indent=2))


if __name__ == "__main__":
    main()
