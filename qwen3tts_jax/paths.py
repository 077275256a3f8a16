"""Every path qwen3tts_jax writes on this machine, under one root: `$QWEN3TTS_JAX_CACHE`,
else `~/.cache/qwen3tts_jax`. Nothing defaults to the working directory.

  converted/        checkpoints converted by `Qwen3TTS.from_pretrained` (one folder per source and dtype)
  kernels/          the CPU kernels, compiled on first use
  xla/              the server's persistent XLA compilation cache
  demo-checkpoint/  the server's embedded random-weight checkpoint
  voices/           the server's registered voices
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "QWEN3TTS_JAX_CACHE"


def cache_dir() -> Path:
    """The root (read from the environment on every call, so a test or a server can move it)."""
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "qwen3tts_jax").expanduser()


def converted_dir() -> Path:
    return cache_dir() / "converted"


def kernels_dir() -> Path:
    return cache_dir() / "kernels"


def xla_cache_dir() -> Path:
    return cache_dir() / "xla"


def demo_checkpoint_dir() -> Path:
    return cache_dir() / "demo-checkpoint"


def voices_dir() -> Path:
    return cache_dir() / "voices"
