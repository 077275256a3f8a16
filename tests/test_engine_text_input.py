"""Text that arrives while speaking: `BatchEngine.open / append_text / end_text` against the
reference's whole-text codes (streaming-text layout), under many arrival schedules.

A row whose next text id has not arrived waits with its state frozen, so however the text is
split and timed, the greedy codes are the reference's for the whole text, other rows of the
batch are untouched, and seeded sampling gives the same codes stalled or not.
"""

from __future__ import annotations

import numpy as np
import pytest

from qwen3tts_jax import GenerationRequest, Qwen3TTS, VoicePrompt, generation
from tests.test_generation import Reference
from tests.test_model_family import INSTRUCT, Captured

TEXT = "Hello world, this is a parity test."
# Long enough for an ICL clone to start before the end (its prompt holds 1 + 25 ref frames - 4
# ref-text ids = 22 target ids).
LONG = ("Hello world, this is a parity test. It goes on for quite a while longer, so that the clone "
        "starts speaking well before the text is complete.")
FRAMES = 40
END = object()


def token_pieces(tts: Qwen3TTS, text: str) -> list[str]:
    """The text cut at its token boundaries (an LLM's pieces), joined back exactly."""
    ids = tts.tokenizer.text_ids(text)
    pieces = [tts.tokenizer.decode([i]) for i in ids]
    assert "".join(pieces) == text
    return pieces


def schedules(tts: Qwen3TTS, text: str) -> dict[str, dict[int, list]]:
    """Step index -> pieces delivered before that step (END: the text's end)."""
    tokens = token_pieces(tts, text)
    n = len(tokens)
    return {
        "all-at-once": {0: [*tokens, END]},
        "one-token-per-step": {i: [t] for i, t in enumerate(tokens)} | {n: [END]},
        "bursts-with-waits": {9 * (i // 4): tokens[i - i % 4:i - i % 4 + 4] for i in range(0, n, 4)}
                             | {9 * (n // 4 + 1): [END]},
        "one-every-3-steps": {3 * i: [t] for i, t in enumerate(tokens)} | {3 * n: [END]},
        "long-pause-then-all": {0: tokens[:3], 15: [*tokens[3:], END]},
        "one-character-per-step": {i: [c] for i, c in enumerate(text)} | {len(text): [END]},
    }


def run(engine, slot: int, request: GenerationRequest, arrivals: dict[int, list], limit: int = 400):
    """Drive `slot` (opened with `request`) under `arrivals`; (codes, frames made before the end
    arrived, steps that made no device call)."""
    engine.open(slot, request)
    frames, before_end, idle, ended = [], 0, 0, False
    for t in range(limit):
        for piece in arrivals.get(t, []):
            if piece is END:
                engine.end_text(slot)
                ended = True
            else:
                engine.append_text(slot, piece)
        if slot not in engine.active_slots():
            break
        out = engine.step()
        idle += not out
        if slot in out:
            frames.append(out[slot].codes)
            before_end += 0 if ended else len(out[slot].codes)
    assert slot not in engine.active_slots()
    return np.concatenate(frames), before_end, idle


def request(voice=None, **kw) -> GenerationRequest:
    return GenerationRequest("", voice, kw.pop("language", "English"), greedy=kw.pop("greedy", True),
                             max_new_frames=kw.pop("max_new_frames", FRAMES), non_streaming_text=False, **kw)


@pytest.fixture(scope="module")
def base(checkpoints, reference_of):
    hf, converted = checkpoints.get("tiny", 0)
    tts = Qwen3TTS.from_pretrained(converted)
    t = np.arange(2 * 24000) / 24000
    clip = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)
    icl = tts.create_voice_prompt((clip, 24000), ref_text="Okay. Yeah.")
    return tts, Reference(reference_of(hf)), icl, VoicePrompt(icl.speaker_embedding)


@pytest.mark.parametrize("schedule", ["all-at-once", "one-token-per-step", "bursts-with-waits", "one-every-3-steps",
                                      "long-pause-then-all", "one-character-per-step"])
def test_xvector_codes_equal_the_reference_whole_text(base, schedule):
    tts, ref, _, xvec = base
    want, _ = ref.clone(TEXT, xvec, "English", FRAMES, non_streaming=False)
    engine = tts.batch_engine(1)
    codes, before_end, _ = run(engine, 0, request(xvec), schedules(tts, TEXT)[schedule])
    np.testing.assert_array_equal(codes, want[0])
    if schedule != "all-at-once":
        assert before_end > 0  # it spoke while the text was still arriving


@pytest.mark.parametrize("schedule", ["one-token-per-step", "bursts-with-waits", "one-character-per-step"])
def test_icl_clone_starts_once_its_prompt_is_known(base, schedule):
    """An ICL prompt holds `1 + ref frames - ref text ids` target ids: prefill waits for them,
    then the codes are the reference's streaming ICL codes."""
    tts, ref, icl, _ = base
    needed = 1 + len(icl.ref_codes) - len(tts.tokenizer.ref_text_ids(icl.ref_text))
    assert len(tts.tokenizer.text_ids(LONG)) > needed + 5
    want, _ = ref.clone(LONG, icl, "English", FRAMES, non_streaming=False)
    codes, before_end, _ = run(tts.batch_engine(1), 0, request(icl), schedules(tts, LONG)[schedule])
    np.testing.assert_array_equal(codes, want[0])
    assert before_end > 0


def test_icl_text_shorter_than_its_prompt_is_spoken_at_the_end(base):
    """Too short to fill the ICL prompt: nothing runs until the end, then it is the whole-text
    request (the reference's padded layout)."""
    tts, ref, icl, _ = base
    want, _ = ref.clone(TEXT, icl, "English", FRAMES, non_streaming=False)
    codes, before_end, idle = run(tts.batch_engine(1), 0, request(icl), schedules(tts, TEXT)["one-token-per-step"])
    np.testing.assert_array_equal(codes, want[0])
    assert before_end == 0 and idle >= len(token_pieces(tts, TEXT))


def test_a_waiting_row_leaves_its_batch_alone(base):
    """Row 0 stalls on its text while row 1 runs a whole-text request: row 1 equals its solo run,
    row 0 the reference; the two are interleaved in one engine."""
    tts, ref, icl, xvec = base
    other = GenerationRequest("A second request, spoken at the same time.", icl, "English", greedy=True,
                              max_new_frames=30)
    solo = tts.generate_codes(other.text, icl, "English", greedy=True, max_new_frames=30)
    want, _ = ref.clone(TEXT, xvec, "English", FRAMES, non_streaming=False)
    engine = tts.batch_engine(2)
    engine.admit(1, other)
    arrivals = schedules(tts, TEXT)["bursts-with-waits"]
    engine.open(0, request(xvec))
    got = {0: [], 1: []}
    waits = 0
    for t in range(300):
        for piece in arrivals.get(t, []):
            engine.end_text(0) if piece is END else engine.append_text(0, piece)
        if not engine.active_slots():
            break
        for slot, out in engine.step().items():
            got[slot].append(out.codes)
            waits += slot == 0 and out.waiting
    assert waits > 0  # row 0 did wait while row 1 went on
    np.testing.assert_array_equal(np.concatenate(got[1]), solo)
    np.testing.assert_array_equal(np.concatenate(got[0]), want[0])


def test_sampled_codes_do_not_depend_on_when_text_arrives(base):
    tts, _, _, xvec = base
    runs = {}
    for schedule in ("all-at-once", "bursts-with-waits", "one-character-per-step"):
        r = request(xvec, greedy=False, seed=5)
        runs[schedule], _, _ = run(tts.batch_engine(1), 0, r, schedules(tts, TEXT)[schedule])
    whole = tts.generate_codes(TEXT, xvec, "English", seed=5, max_new_frames=FRAMES, non_streaming_text=False)
    for codes in runs.values():
        np.testing.assert_array_equal(codes, whole)


def test_no_device_call_while_every_row_waits_and_no_recompiles(base, monkeypatch):
    tts, _, _, xvec = base
    engine = tts.batch_engine(1)
    run(engine, 0, request(xvec), schedules(tts, TEXT)["one-token-per-step"])  # compiles what it needs
    sizes = (generation.generate_frames._cache_size(), generation.append_text._cache_size(),
             generation.prefill._cache_size())
    calls = []
    real = generation.generate_frames
    monkeypatch.setattr(generation, "generate_frames", lambda *a, **k: calls.append(1) or real(*a, **k))
    tokens = token_pieces(tts, TEXT)
    engine.open(0, request(xvec))
    engine.append_text(0, "".join(tokens[:3]))  # t_0 (the prompt's) and t_1 commit; t_2 may still grow
    for _ in range(5):
        engine.step()
    assert engine.waiting and len(calls) == 1  # one frame had its text; then it waits, with no device call
    engine.append_text(0, "".join(tokens[3:]))
    engine.end_text(0)
    while engine.active_slots():
        engine.step()
    monkeypatch.undo()
    assert (generation.generate_frames._cache_size(), generation.append_text._cache_size(),
            generation.prefill._cache_size()) == sizes


def test_bad_use_is_a_clear_error(base):
    tts, _, _, xvec = base
    engine = tts.batch_engine(2)
    with pytest.raises(ValueError, match="non_streaming_text"):
        engine.open(0, GenerationRequest("", xvec, "English", non_streaming_text=True))
    with pytest.raises(ValueError, match="no open text"):
        engine.append_text(0, "nothing is open")
    engine.admit(1, GenerationRequest("A whole text.", xvec, "English", max_new_frames=5))
    with pytest.raises(ValueError, match="no open text"):
        engine.append_text(1, "it has all its text")
    engine.open(0, request(xvec))
    engine.append_text(0, "Some text.")
    engine.end_text(0)
    with pytest.raises(ValueError, match="ended"):
        engine.end_text(0)
    engine.release(0)
    engine.open(0, request(xvec))
    with pytest.raises(ValueError, match="empty"):
        engine.end_text(0)  # no words at all
    assert 0 not in engine.active_slots()
    engine.open(0, request(xvec))
    engine.append_text(0, "   ")
    engine.append_text(0, "\n\t")
    with pytest.raises(ValueError, match="empty"):
        engine.end_text(0)  # only whitespace: refused like a blank whole text, not spoken
    assert 0 not in engine.active_slots()


@pytest.fixture(scope="module")
def family(checkpoints, reference_of):
    out = {}
    for preset in ("tiny-cv", "tiny-vd"):
        hf, converted = checkpoints.get(preset, 3)
        out[preset] = Qwen3TTS.from_pretrained(converted), Captured(reference_of(hf))
    return out


def test_custom_voice_and_voice_design_stream_their_text(family):
    """Their streaming-text layout (`non_streaming_mode=False` in the reference)."""
    cv, ref = family["tiny-cv"]
    ref.custom_voice(TEXT, "ryan", "English", INSTRUCT, False)
    codes, before_end, _ = run(cv.batch_engine(1), 0, request(speaker="ryan", instruct=INSTRUCT),
                               schedules(cv, TEXT)["bursts-with-waits"])
    np.testing.assert_array_equal(codes, ref.codes[0])
    assert before_end > 0
    vd, ref = family["tiny-vd"]
    ref.voice_design(TEXT, INSTRUCT, "auto", False)
    codes, _, _ = run(vd.batch_engine(1), 0, request(instruct=INSTRUCT, language="auto"),
                      schedules(vd, TEXT)["one-character-per-step"])
    np.testing.assert_array_equal(codes, ref.codes[0])


def test_stream_text_api_yields_the_whole_texts_audio(base):
    """`Qwen3TTS.stream_text` over a generator and over an async generator (slow pieces)."""
    import asyncio
    import time

    tts, _, _, xvec = base
    want, _ = tts.synthesize(TEXT, xvec, "English", seed=2, max_new_frames=FRAMES, non_streaming_text=False)
    tokens = token_pieces(tts, TEXT)

    def slow():
        for t in tokens:
            time.sleep(0.01)
            yield t
    got = np.concatenate(list(tts.stream_text(slow(), xvec, "English", seed=2, max_new_frames=FRAMES)))
    np.testing.assert_array_equal(got, want)

    async def aslow():
        for t in tokens:
            await asyncio.sleep(0.01)
            yield t

    async def collect():
        return [c async for c in tts.stream_text(aslow(), xvec, "English", seed=2, max_new_frames=FRAMES)]
    got = np.concatenate(asyncio.run(collect()))
    np.testing.assert_array_equal(got, want)


def test_closing_stream_text_stops_reading_the_source(base):
    """A caller that stops listening stops the reading too: an LLM's stream is not drained."""
    import threading
    import time

    tts, _, _, xvec = base
    read, closed = [], threading.Event()

    def endless():
        try:
            while True:
                read.append(1)
                yield "word "
        finally:
            closed.set()
    it = tts.stream_text(endless(), xvec, "English", seed=2, max_new_frames=FRAMES)
    next(it)
    it.close()
    assert closed.wait(5), "the source was never closed"
    n = len(read)
    time.sleep(0.2)
    assert len(read) == n
