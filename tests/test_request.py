"""`GenerationDefaults`: a checkpoint's generation_config.json, the one source of sampling
defaults for the API and the server alike."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from qwen3tts_jax import GenerationDefaults, GenerationRequest, Qwen3TTS, VoicePrompt

CUSTOM = {"temperature": 0.5, "top_k": 7, "subtalker_top_p": 0.8, "max_new_tokens": 101}


def test_defaults_come_from_the_file_and_fall_back_to_the_reference(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(CUSTOM))
    d = GenerationDefaults.from_dir(tmp_path)
    assert d.max_new_frames == 100
    r = d.request("Hi.", VoicePrompt(np.zeros(4, np.float32)), "English", seed=3, top_p=None)
    fallback = GenerationRequest("Hi.", r.voice)
    assert (r.temperature, r.top_k, r.subtalker_top_p, r.seed) == (0.5, 7, 0.8, 3)
    assert (r.top_p, r.repetition_penalty, r.subtalker_top_k) == (fallback.top_p, fallback.repetition_penalty,
                                                                  fallback.subtalker_top_k)
    assert d.request("Hi.", r.voice, temperature=0.7).temperature == 0.7
    with pytest.raises(TypeError, match="nucleus"):
        d.request("Hi.", r.voice, nucleus=0.3)
    assert GenerationDefaults.from_dir(tmp_path / "absent") == GenerationDefaults()
    (tmp_path / "generation_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="generation_config.json"):
        GenerationDefaults.from_dir(tmp_path)


@pytest.fixture(scope="module")
def custom(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint, and a copy whose generation_config.json sets other defaults."""
    _, converted = tiny_checkpoint
    dst = tmp_path_factory.mktemp("custom") / "tiny"
    shutil.copytree(converted, dst)
    (dst / "generation_config.json").write_text(json.dumps(CUSTOM))
    return Qwen3TTS.from_pretrained(converted), Qwen3TTS.from_pretrained(dst)


def test_the_api_and_the_server_apply_the_checkpoint_defaults(custom):
    from qwen3tts_jax.server.backend import backend_for

    plain, tts = custom
    voice = VoicePrompt(np.random.default_rng(0).standard_normal(tts.config.talker.hidden_size).astype(np.float32))
    given = {k: v for k, v in CUSTOM.items() if k != "max_new_tokens"}
    ours = tts.generate_codes("Hello there.", voice, "English", seed=5, max_new_frames=12)
    np.testing.assert_array_equal(ours, plain.generate_codes("Hello there.", voice, "English", seed=5,
                                                             max_new_frames=12, **given))
    assert not np.array_equal(ours, plain.generate_codes("Hello there.", voice, "English", seed=5,
                                                         max_new_frames=12))
    backend = backend_for(tts, 1, model_key="custom")
    served = backend.make_request("Hello there.", voice, "English", seed=5, max_new_frames=None,
                                  max_audio_seconds=120.0, top_k=None)
    assert (served.temperature, served.top_k, served.subtalker_top_p) == (0.5, 7, 0.8)
    assert served.max_new_frames == int((3.0 + 0.25 * len("Hello there.")) * 12.5)  # the runaway budget
    assert tts.default_max_new_frames == 100
