"""Configs parse every released config file and honour the real values (REFERENCE-FACTS 1, 6)."""

from __future__ import annotations

import dataclasses

import pytest

from qwen3tts_jax.config import Qwen3TTSConfig, TalkerConfig
from tests.reference.checkpoints import HF_CONFIGS

MODELS = sorted(p.name for p in HF_CONFIGS.iterdir() if p.name.startswith("Qwen3-TTS-12Hz-"))


def test_every_released_config_is_here():
    assert MODELS == ["Qwen3-TTS-12Hz-0.6B-Base", "Qwen3-TTS-12Hz-0.6B-CustomVoice",
                      "Qwen3-TTS-12Hz-1.7B-Base", "Qwen3-TTS-12Hz-1.7B-CustomVoice",
                      "Qwen3-TTS-12Hz-1.7B-VoiceDesign"]


@pytest.mark.parametrize("name", MODELS)
def test_released_configs_parse_with_real_values(name):
    cfg = Qwen3TTSConfig.from_dir(HF_CONFIGS / name)
    t, p = cfg.talker, cfg.code_predictor
    assert (t.head_dim, p.head_dim) == (128, 128)  # explicit, not hidden / heads
    assert (t.rope_theta, p.rope_theta) == (1e6, 1e6)
    assert (t.codec_pad_id, t.codec_bos_id, t.codec_eos_token_id) == (2148, 2149, 2150)
    assert (t.codec_think_id, t.codec_nothink_id, t.codec_think_bos_id, t.codec_think_eos_id) == (
        2154, 2155, 2156, 2157)
    assert t.language_id("English") == 2050 and t.language_id("chinese") == 2055
    assert t.num_code_groups == p.num_code_groups == 16
    assert (t.vocab_size, p.vocab_size, t.text_vocab_size) == (3072, 2048, 151936)
    big = "1.7B" in name
    assert t.hidden_size == (2048 if big else 1024)
    assert p.hidden_size == 1024 and p.has_projection == big
    assert (cfg.speaker_encoder is not None) == name.endswith("Base")
    if cfg.speaker_encoder is not None:
        assert cfg.speaker_encoder.enc_dim == t.hidden_size
    dec, enc = cfg.speech_tokenizer.decoder, cfg.speech_tokenizer.encoder
    assert (dec.head_dim, dec.hidden_size, dec.sliding_window, dec.samples_per_frame) == (64, 512, 72, 1920)
    assert (enc.head_dim, enc.hop_length, enc.valid_num_quantizers, enc.num_quantizers) == (64, 960, 16, 32)
    hash(cfg)  # static jit argument


def test_unknown_language_is_a_clear_error():
    cfg = Qwen3TTSConfig.from_dir(HF_CONFIGS / MODELS[0])
    with pytest.raises(ValueError, match="unsupported language 'klingon'"):
        cfg.talker.language_id("klingon")


def test_head_dim_falls_back_like_the_reference_when_absent():
    assert TalkerConfig.from_hf_config({"hidden_size": 64, "num_attention_heads": 4}).head_dim == 16


@pytest.mark.parametrize("change, message", [
    ({"tokenizer_type": "qwen3_tts_tokenizer_25hz"}, "12 Hz"),
    ({"model_type": "llama"}, "model_type"),
])
def test_unsupported_checkpoints_are_rejected(change, message):
    import json
    main = json.loads((HF_CONFIGS / MODELS[0] / "config.json").read_text())
    with pytest.raises(ValueError, match=message):
        Qwen3TTSConfig.from_hf_config({**main, **change})


def test_configs_are_frozen():
    cfg = Qwen3TTSConfig.from_dir(HF_CONFIGS / MODELS[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.talker.hidden_size = 3
