"""BatchEngine: continuous batching (join between frames, release, refill) and fixed shapes."""

from __future__ import annotations

import numpy as np
import pytest

from qwen3tts_jax import GenerationRequest, Qwen3TTS, VoicePrompt, generation

TEXTS = ["The first request, long enough to run for a while.", "Second one.", "A third request joins late."]


@pytest.fixture(scope="module")
def tts(checkpoints):
    return Qwen3TTS.from_pretrained(checkpoints.get("tiny-gqa4", 0)[1])


@pytest.fixture(scope="module")
def voices(tts):
    rng = np.random.default_rng(4)
    clip = (0.2 * rng.standard_normal(30000)).astype(np.float32)
    return [tts.create_voice_prompt((clip, 24000), ref_text="Okay. Yeah."),
            VoicePrompt(rng.standard_normal(tts.config.talker.hidden_size).astype(np.float32))]


def _request(i, voices, frames=10):
    return GenerationRequest(TEXTS[i], voices[i % 2], "English", seed=i, greedy=True, max_new_frames=frames)


def test_requests_join_between_frames_and_match_solo_runs(tts, voices):
    solo = [tts.generate_codes(TEXTS[i], voices[i % 2], "English", greedy=True, max_new_frames=10) for i in range(3)]
    engine = tts.batch_engine(2)
    got = {i: [] for i in range(3)}
    pcm = {i: [] for i in range(3)}
    engine.admit(0, _request(0, voices))
    owner = {0: 0}
    for step in range(40):
        if step == 3:
            engine.admit(1, _request(1, voices))
            owner[1] = 1
        out = engine.step()
        for slot, o in out.items():
            got[owner[slot]].append(o.codes)
            pcm[owner[slot]].append(o.pcm)
            if o.finished and owner[slot] == 1:        # slot 1 frees up: refill it with request 2
                engine.admit(1, _request(2, voices))
                owner[1] = 2
        if not engine.active_slots():
            break
    for i in range(3):
        np.testing.assert_array_equal(np.concatenate(got[i]), solo[i])
        wav, _ = tts.synthesize(TEXTS[i], voices[i % 2], "English", greedy=True, max_new_frames=10)
        np.testing.assert_allclose(np.concatenate(pcm[i]), wav, atol=1e-4)


def test_release_frees_a_slot_at_once(tts, voices):
    engine = tts.batch_engine(2)
    engine.admit(0, _request(0, voices, 30))
    engine.admit(1, _request(1, voices, 30))
    engine.step()
    engine.release(0)
    assert engine.active_slots() == [1]
    out = engine.step()
    assert list(out) == [1]
    engine.admit(0, _request(2, voices))
    assert engine.active_slots() == [0, 1]
    with pytest.raises(ValueError, match="busy"):
        engine.admit(0, _request(2, voices))


def test_steady_state_never_recompiles(tts, voices):
    """After warm-up, more frames, new requests in the same prompt bucket and new sampling
    parameters reuse the compiled executables."""
    engine = tts.batch_engine(2)
    engine.admit(0, _request(0, voices))
    engine.step()
    sizes = (generation.generate_frames._cache_size(), generation.prefill._cache_size())
    for _ in range(5):
        engine.step()
    engine.release(0)
    r = GenerationRequest(TEXTS[2], voices[0], "French", seed=9, temperature=0.7, top_k=20, top_p=0.9,
                          repetition_penalty=1.2, max_new_frames=7)
    engine.admit(0, r)
    engine.admit(1, _request(1, voices))
    for _ in range(5):
        engine.step()
    assert (generation.generate_frames._cache_size(), generation.prefill._cache_size()) == sizes


def test_warmup_compiles_every_attention_span(tts, voices):
    """After `warmup`, a stream that grows across attention-span buckets compiles nothing."""
    engine = tts.batch_engine(1, max_seq_len=512)
    engine.warmup()
    before = generation.generate_frames._cache_size()
    engine.admit(0, _request(0, voices, 200))     # ~40-row prompt + 200 frames: spans 128 and 256
    while engine.active_slots():
        engine.step()
    assert generation.generate_frames._cache_size() == before


def test_prompt_too_long_for_the_engine_is_rejected(tts, voices):
    engine = tts.batch_engine(1, max_seq_len=24, max_text_tokens=8)
    with pytest.raises(ValueError, match="positions"):
        engine.admit(0, _request(0, voices))
    with pytest.raises(ValueError, match="text too long"):
        engine.admit(0, GenerationRequest(TEXTS[0] * 3, voices[1], "English"))


@pytest.mark.parametrize("greedy", [True, False])
def test_unrolled_code_predictor_makes_the_same_frames(tts, voices, greedy):
    """DecodeSpec.unroll_predictor (the GPU default) only changes how the 15 steps compile:
    same heads, embeddings and PRNG keys per step, so the same codes, sampled or greedy."""
    import dataclasses

    import jax

    frames = {}
    for unroll in (False, True):
        engine = tts.batch_engine(2)
        spec = dataclasses.replace(engine.spec, unroll_predictor=unroll)
        for slot in range(2):
            engine.admit(slot, GenerationRequest(TEXTS[slot], voices[slot], "English", seed=7 + slot,
                                                 greedy=greedy, max_new_frames=12))
        engine.state, (codes, made, _) = generation.generate_frames(spec, engine.weights, engine.state, 6)
        frames[unroll] = np.asarray(jax.device_get(codes))
        assert np.asarray(made).tolist() == [6, 6]
    assert len(np.unique(frames[False][:, :, 1:])) > 5   # real codebook 1..15 content, not zeros
    np.testing.assert_array_equal(frames[True], frames[False])
