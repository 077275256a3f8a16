"""qwen3tts_jax: a JAX/Flax implementation of Qwen3-TTS (12 Hz family)."""

from qwen3tts_jax.api import Qwen3TTS
from qwen3tts_jax.checkpoint import LoadedModel, load
from qwen3tts_jax.config import Qwen3TTSConfig
from qwen3tts_jax.engine import BatchEngine, SlotOutput
from qwen3tts_jax.request import GenerationDefaults, GenerationRequest
from qwen3tts_jax.voice import VoicePrompt

__all__ = ["BatchEngine", "GenerationDefaults", "GenerationRequest", "LoadedModel", "Qwen3TTS", "Qwen3TTSConfig",
           "SlotOutput", "VoicePrompt", "load"]
