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
    engine = tts.batch_engine(1, max_seq_len=24)
    with pytest.raises(ValueError, match="positions"):
        engine.admit(0, _request(0, voices))
    with pytest.raises(ValueError, match="multiple of 16"):
        tts.batch_engine(1, max_text_tokens=8)


def test_text_longer_than_the_ring_is_fed_as_it_is_read(tts, voices):
    """A row's text ring holds 16 ids here; a text of ~40 ids waits on the host and is appended
    as the row reads it: the same codes as with all of it on the device at once."""
    text = " ".join(TEXTS * 2)
    r = GenerationRequest(text, voices[1], "English", greedy=True, max_new_frames=60)
    assert len(tts.tokenizer.text_ids(text)) > 32
    codes = {}
    for ring in (16, 512):
        engine = tts.batch_engine(1, max_text_tokens=ring)
        engine.admit(0, r)
        frames = []
        while engine.active_slots():
            frames += [o.codes for o in engine.step().values()]
        codes[ring] = np.concatenate(frames)
    assert len(codes[16]) > 40  # it read past the ring's size
    np.testing.assert_array_equal(codes[16], codes[512])


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


def test_idle_slots_cost_nothing_one_busy_slot_runs_a_one_row_step(tts, voices):
    """A 16-slot engine with one request computes one row: its other rows are never touched,
    and its codes and PCM are exactly a 1-slot engine's."""
    solo = tts.batch_engine(1)
    wide = tts.batch_engine(16)
    outs = {}
    for name, engine in (("solo", solo), ("wide", wide)):
        engine.admit(0 if name == "solo" else 11, _request(0, voices, 12))
        codes, pcm = [], []
        while engine.active_slots():
            (o,) = engine.step().values()
            codes.append(o.codes)
            pcm.append(o.pcm)
        outs[name] = np.concatenate(codes), np.concatenate(pcm)
    np.testing.assert_array_equal(outs["wide"][0], outs["solo"][0])
    assert outs["wide"][1].tobytes() == outs["solo"][1].tobytes()
    assert np.asarray(wide.state.length)[1:].tolist() == [0] * 15  # rows 1..15 never computed


def test_rows_stay_packed_through_releases_and_match_solo_runs(tts, voices):
    """Requests join, end at different times and are cancelled in the middle of an 8-slot engine:
    the last row moves into the freed one (its state and KV cache), every request's codes equal
    its solo run, and after warm-up no new shape is compiled."""
    lengths = {0: 14, 1: 5, 2: 20, 3: 9}
    requests = {i: GenerationRequest(TEXTS[i % 3], voices[i % 2], "English", seed=i, greedy=True,
                                     max_new_frames=n) for i, n in lengths.items()}
    solo = {i: tts.generate_codes(r.text, r.voice, "English", greedy=True, max_new_frames=r.max_new_frames)
            for i, r in requests.items()}
    engine = tts.batch_engine(8, max_seq_len=512)
    engine.warmup()
    sizes = generation.generate_frames._cache_size(), generation.move_row._cache_size()
    got = {i: [] for i in requests}
    slot_of = {0: 6, 1: 2, 2: 0, 3: 5}
    engine.admit(slot_of[0], requests[0])
    engine.admit(slot_of[1], requests[1])
    owner = {s: i for i, s in slot_of.items() if i in (0, 1)}
    cancelled = GenerationRequest(TEXTS[1], voices[0], "English", seed=9, greedy=True, max_new_frames=50)
    for step in range(60):
        if step == 2:
            engine.admit(slot_of[2], requests[2])
            owner[slot_of[2]] = 2
            engine.admit(7, cancelled)            # cancelled at step 4: a row in the middle
        if step == 4:
            engine.release(7)
        if step == 6:
            engine.admit(slot_of[3], requests[3])
            owner[slot_of[3]] = 3
        assert engine._rows == [s for s in engine._rows if s in engine.active_slots()]  # no holes
        for slot, o in engine.step().items():
            if slot in owner:
                got[owner[slot]].append(o.codes)
        if not engine.active_slots():
            break
    for i in requests:
        np.testing.assert_array_equal(np.concatenate(got[i]), solo[i])
    assert (generation.generate_frames._cache_size(), generation.move_row._cache_size()) == sizes
