"""Device memory of a full batch with long caches, in a fresh process (so the peak is the engine's
own, not a checkpoint build's or conversion's).

    python benchmarks/memory.py DIR [--rows 16] [--max-seq-len 2048] [--steps 6]

DIR is a converted checkpoint (for example `.cache/real-0.6b-native-hf-jax-bfloat16`, which
`benchmarks/generation.py --native` leaves behind). Reports the allocator's peak and current
bytes after loading and after `--steps` engine steps. Accelerators only: XLA's CPU client keeps
no allocator statistics.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from common import median_ms, timed


def gib(stats: dict, key: str) -> float:
    return round(stats[key] / 2**30, 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    import jax

    from qwen3tts_jax import GenerationRequest, Qwen3TTS, VoicePrompt

    device = jax.devices()[0]
    if not device.memory_stats():
        raise SystemExit(f"{device.platform} keeps no allocator statistics: run this on an accelerator")
    tts = Qwen3TTS.from_pretrained(args.model)
    loaded = device.memory_stats()
    voice = VoicePrompt(np.random.default_rng(0).standard_normal(tts.config.talker.hidden_size).astype(np.float32))
    engine = tts.batch_engine(args.rows, max_seq_len=args.max_seq_len)
    request = GenerationRequest("The quick brown fox jumps over the lazy dog.", voice, "English",
                                max_new_frames=10_000)
    for slot in range(args.rows):
        engine.admit(slot, request)
    steps = timed(engine.step, args.steps)
    ran = device.memory_stats()
    cache = sum(x.nbytes for x in engine.state.cache.keys + engine.state.cache.values)
    print(json.dumps({
        "model": args.model, "dtype": str(np.dtype(tts.dtype)), "rows": args.rows,
        "max_seq_len": args.max_seq_len, "device": str(device), "kv_cache_gib": round(cache / 2**30, 3),
        "after_load": {"peak_gib": gib(loaded, "peak_bytes_in_use"), "in_use_gib": gib(loaded, "bytes_in_use")},
        "after_steps": {"peak_gib": gib(ran, "peak_bytes_in_use"), "in_use_gib": gib(ran, "bytes_in_use")},
        "ms_per_step_after_first": median_ms(steps[1:]),
    }, indent=2))


if __name__ == "__main__":
    main()
