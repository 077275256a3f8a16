"""Official Qwen3-TTS checkpoints (safetensors) -> Flax parameters (orbax). No torch needed."""

from convert.engine import ConversionError, convert_checkpoint, map_state_dict

__all__ = ["ConversionError", "convert_checkpoint", "map_state_dict"]
