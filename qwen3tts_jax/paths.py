"""Where qwen3tts_jax keeps what it builds on this machine (converted checkpoints, compiled
kernels, the server's XLA cache): `$QWEN3TTS_JAX_CACHE`, else `~/.cache/qwen3tts_jax`."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("QWEN3TTS_JAX_CACHE", Path.home() / ".cache" / "qwen3tts_jax"))
