"""qwen3tts_jax: a JAX/Flax implementation of Qwen3-TTS (12 Hz family)."""

from qwen3tts_jax.checkpoint import LoadedModel, load
from qwen3tts_jax.config import Qwen3TTSConfig

__all__ = ["LoadedModel", "Qwen3TTSConfig", "load"]
