"""Official Qwen3-TTS checkpoints (safetensors) -> Flax parameters (orbax). No torch needed."""

from qwen3tts_jax.convert.converter import ConversionError, convert_checkpoint, map_state_dict

__all__ = ["ConversionError", "convert_checkpoint", "map_state_dict"]
