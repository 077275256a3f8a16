"""The released configuration files of the 12 Hz models and the real text tokenizer
(vocab.json, merges.txt), as published (no weights). See hf-configs/LICENSE."""

from pathlib import Path

HF_CONFIGS = Path(__file__).resolve().parent / "hf-configs"
BASE_06B = HF_CONFIGS / "Qwen3-TTS-12Hz-0.6B-Base"
