"""Shared by the benchmark scripts: the cached full-size checkpoint, timing, result files.

The full-size checkpoint is a random-weight reference model at the released 0.6B-Base
config, written in the official layout (main weights bfloat16 as released, speech tokenizer
float32) and kept under `paths.cache_dir() / "benchmarks"` between runs. Needs the test extra
(torch, qwen-tts).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from qwen3tts_jax import paths

REPO = Path(__file__).resolve().parents[1]
CACHE = paths.cache_dir() / "benchmarks"
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))


# Model name -> (the reference checkpoint preset, the released config folder), for --model.
MODELS = {
    "0.6b-base": ("real-0.6b", "Qwen3-TTS-12Hz-0.6B-Base"),
    "1.7b-base": ("real-1.7b", "Qwen3-TTS-12Hz-1.7B-Base"),
    "0.6b-custom-voice": ("real-0.6b-cv", "Qwen3-TTS-12Hz-0.6B-CustomVoice"),
    "1.7b-custom-voice": ("real-1.7b-cv", "Qwen3-TTS-12Hz-1.7B-CustomVoice"),
    "1.7b-voice-design": ("real-1.7b-vd", "Qwen3-TTS-12Hz-1.7B-VoiceDesign"),
}


def full_size_checkpoint(model: str = "0.6b-base", dtype: str = "bfloat16", native: bool = False) -> Path:
    """The official-layout folder of one of `MODELS` at its released sizes, built once and cached.

    `native=True` builds it without torch (random Flax init run backwards through the conversion
    table): for machines without the reference installed.
    """
    preset, folder = MODELS[model]
    if native:
        from qwen3tts_jax.convert.demo import build_random_checkpoint, released_configs

        path = CACHE / f"{preset}-native-hf"
        if not (path / "model.safetensors").exists():
            build_random_checkpoint(path, *released_configs(folder))
        return path
    path = CACHE / f"{preset}-{dtype}-hf"
    if not (path / "model.safetensors").exists():
        from tests.reference.checkpoints import build_checkpoint

        tmp = path.with_name(path.name + ".partial")
        build_checkpoint(tmp, preset, seed=0, dtype=dtype)
        tmp.rename(path)
    return path


def converted(src: Path, dtype: str) -> Path:
    from qwen3tts_jax.checkpoint import FORMAT_VERSION, format_version

    dst = CACHE / f"{src.name}-jax-{dtype}"
    if format_version(dst) != FORMAT_VERSION:
        from qwen3tts_jax.convert import convert_checkpoint

        convert_checkpoint(src, dst, dtype=dtype, overwrite=dst.exists())
    return dst


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def median_ms(samples: list[float]) -> float:
    return round(1000 * statistics.median(samples), 2)


def machine() -> dict:
    import jax

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO).stdout.strip()
    return {"machine": f"{platform.machine()} {os.cpu_count()} cores", "jax": jax.__version__,
            "device": str(jax.devices()[0]), "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                      time.gmtime())}


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**machine(), **payload}, indent=2) + "\n")
    print(json.dumps(payload, indent=2))
    return path
