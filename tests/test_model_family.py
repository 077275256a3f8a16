"""CustomVoice and VoiceDesign against the reference's `generate_custom_voice` /
`generate_voice_design` on tiny random weights built from their released configs.

Each case captures the reference's prefill inputs (`talker.generate`'s `inputs_embeds` and
`trailing_text_hidden`) and its codes in one call, and compares both with ours: the prompt
vectors row for row, then the greedy codes token for token.
"""

from __future__ import annotations

import numpy as np
import pytest

from qwen3tts_jax import GenerationRequest, Qwen3TTS, VoicePrompt
from qwen3tts_jax.prompt import embed_layout, embed_text_ids
from tests.helpers import rel_err

TEXT = "Hello world, this is a parity test."
CHINESE = "你好，世界。今天天气很好。"
INSTRUCT = "Speak slowly, in a warm and happy voice."
FRAMES = 40


class Captured:
    """The reference wrapper with its talker's prefill inputs and its codes recorded per call."""

    def __init__(self, wrapper):
        self.wrapper = wrapper
        model = wrapper.model
        talker_generate, generate = model.talker.generate, model.generate

        def capture_talker(*args, **kwargs):
            self.embeds = kwargs["inputs_embeds"].detach().numpy()
            self.trailing = kwargs["trailing_text_hidden"].detach().numpy()
            return talker_generate(*args, **kwargs)

        def capture(*args, **kwargs):
            out = generate(*args, **kwargs)
            self.codes = [c.numpy() for c in out[0]]
            return out
        model.talker.generate = capture_talker
        model.generate = capture

    def custom_voice(self, text, speaker, language, instruct, non_streaming):
        return self.wrapper.generate_custom_voice(
            text, speaker=speaker, language=language, instruct=instruct, non_streaming_mode=non_streaming,
            do_sample=False, subtalker_dosample=False, max_new_tokens=FRAMES + 1)

    def voice_design(self, text, instruct, language, non_streaming):
        return self.wrapper.generate_voice_design(
            text, instruct=instruct, language=language, non_streaming_mode=non_streaming,
            do_sample=False, subtalker_dosample=False, max_new_tokens=FRAMES + 1)


@pytest.fixture(scope="module")
def family(checkpoints, reference_of):
    out = {}
    for preset in ("tiny-cv", "tiny-cv-0b6", "tiny-vd"):
        hf, converted = checkpoints.get(preset, 3)
        out[preset] = Qwen3TTS.from_pretrained(converted), Captured(reference_of(hf))
    return out


def assert_same_prompt(tts, ref, text, language, non_streaming, speaker=None, instruct=None):
    """Our prefill rows and trailing-text vectors equal the reference's (batch of one, unpadded)."""
    layout = tts.prompts.layout(text, None, language, non_streaming, speaker=speaker, instruct=instruct)
    parts = tts.decode_parts()
    pieces = (parts.spec.talker_def, parts.weights.talker, parts.spec.predictor_def, parts.weights.predictor)
    n = len(layout)
    ours = np.asarray(embed_layout(*pieces, layout, np.zeros(tts.config.talker.hidden_size, np.float32), None,
                                   n, parts.spec.groups))
    assert ref.embeds.shape[1] == n, (ref.embeds.shape, n)
    assert np.abs(ours - ref.embeds[0]).max() < 1e-5
    m = len(layout.trailing_ids)
    trailing = np.asarray(embed_text_ids(*pieces[:2], layout.trailing_ids, m))
    assert ref.trailing.shape[1] == m
    assert np.abs(trailing - ref.trailing[0]).max() < 1e-5


CV_CASES = [("ryan", "English"), ("vivian", "auto"), ("dylan", "Chinese"), ("eric", "auto"), ("eric", "English"),
            ("", "auto")]


@pytest.mark.parametrize("non_streaming", [False, True], ids=["streaming-text", "non-streaming-text"])
@pytest.mark.parametrize("instruct", [None, INSTRUCT], ids=["plain", "instruct"])
@pytest.mark.parametrize("speaker,language", CV_CASES, ids=[f"{s or 'none'}-{lang}" for s, lang in CV_CASES])
def test_custom_voice_equals_the_reference(family, speaker, language, instruct, non_streaming):
    tts, ref = family["tiny-cv"]
    text = CHINESE if language == "Chinese" else TEXT
    ref.custom_voice(text, speaker, language, instruct, non_streaming)
    assert_same_prompt(tts, ref, text, language, non_streaming, speaker, instruct)
    ours = tts.generate_codes(text, speaker=speaker, language=language, instruct=instruct, greedy=True,
                              max_new_frames=FRAMES, non_streaming_text=non_streaming)
    np.testing.assert_array_equal(ours, ref.codes[0])
    assert 2 <= len(ours) <= FRAMES


def test_dialect_speakers_switch_the_language_id(family):
    """eric speaks Sichuanese and dylan Beijing dialect when the language is Chinese or auto: the
    language row holds the dialect's id (the reference's rule); with English it stays English."""
    tts, _ = family["tiny-cv"]
    t = tts.config.talker
    for speaker, dialect in (("eric", "sichuan_dialect"), ("dylan", "beijing_dialect")):
        for language in ("Chinese", "auto"):
            codec = tts.prompts.layout(TEXT, None, language, speaker=speaker).codec_ids
            assert t.language_id(dialect) in codec and t.language_id("chinese") not in codec
        assert t.language_id("english") in tts.prompts.layout(TEXT, None, "English", speaker=speaker).codec_ids


@pytest.mark.parametrize("non_streaming", [False, True], ids=["streaming-text", "non-streaming-text"])
def test_a_0_6b_custom_voice_drops_the_instruct_like_the_reference(family, non_streaming):
    tts, ref = family["tiny-cv-0b6"]
    assert not tts.supports_instruct and tts.speakers
    ref.custom_voice(TEXT, "ryan", "English", INSTRUCT, non_streaming)
    assert_same_prompt(tts, ref, TEXT, "English", non_streaming, "ryan", INSTRUCT)
    ours = tts.generate_codes(TEXT, speaker="ryan", language="English", instruct=INSTRUCT, greedy=True,
                              max_new_frames=FRAMES, non_streaming_text=non_streaming)
    np.testing.assert_array_equal(ours, ref.codes[0])
    plain = tts.generate_codes(TEXT, speaker="ryan", language="English", greedy=True, max_new_frames=FRAMES,
                               non_streaming_text=non_streaming)
    np.testing.assert_array_equal(ours, plain)


VD_CASES = [("English", INSTRUCT), ("auto", INSTRUCT), ("English", ""), ("auto", "")]


@pytest.mark.parametrize("non_streaming", [False, True], ids=["streaming-text", "non-streaming-text"])
@pytest.mark.parametrize("language,instruct", VD_CASES,
                         ids=[f"{lang}-{'instruct' if i else 'none'}" for lang, i in VD_CASES])
def test_voice_design_equals_the_reference(family, language, instruct, non_streaming):
    tts, ref = family["tiny-vd"]
    ref.voice_design(TEXT, instruct, language, non_streaming)
    assert_same_prompt(tts, ref, TEXT, language, non_streaming, None, instruct)
    ours = tts.generate_codes(TEXT, instruct=instruct, language=language, greedy=True, max_new_frames=FRAMES,
                              non_streaming_text=non_streaming)
    np.testing.assert_array_equal(ours, ref.codes[0])


def test_default_layouts_follow_the_model_type(family):
    """Non-streaming text by default for CustomVoice and VoiceDesign (the reference's default)."""
    cv, ref = family["tiny-cv"]
    ref.wrapper.generate_custom_voice(TEXT, speaker="ryan", language="English", do_sample=False,
                                      subtalker_dosample=False, max_new_tokens=FRAMES + 1)
    np.testing.assert_array_equal(cv.generate_codes(TEXT, speaker="ryan", language="English", greedy=True,
                                                    max_new_frames=FRAMES), ref.codes[0])
    vd, ref = family["tiny-vd"]
    ref.wrapper.generate_voice_design(TEXT, instruct=INSTRUCT, language="English", do_sample=False,
                                      subtalker_dosample=False, max_new_tokens=FRAMES + 1)
    np.testing.assert_array_equal(vd.generate_codes(TEXT, instruct=INSTRUCT, language="English", greedy=True,
                                                    max_new_frames=FRAMES), ref.codes[0])


def test_waveform_equals_the_reference_decode(family):
    """No reference prefix and no cut: `decode_codes(codes)` is the reference's wav; the streamed
    `synthesize` is the same audio from the streaming decoder."""
    tts, ref = family["tiny-cv"]
    wavs, sr = ref.custom_voice(TEXT, "vivian", "English", INSTRUCT, True)
    codes = tts.generate_codes(TEXT, speaker="vivian", language="English", instruct=INSTRUCT, greedy=True,
                               max_new_frames=FRAMES)
    wav, our_sr = tts.decode_codes(codes)
    assert our_sr == sr and wav.shape == wavs[0].shape
    assert rel_err(wav, wavs[0]) < 1e-4
    streamed, _ = tts.synthesize(TEXT, speaker="vivian", language="English", instruct=INSTRUCT, greedy=True,
                                 max_new_frames=FRAMES)
    assert streamed.shape == wav.shape and rel_err(streamed, wav) < 1e-4


def test_mixed_rows_batch_like_solo_rows(family):
    """Speakers, instructs (of different lengths), languages and text lengths in one batch: each
    row equals its solo run, sampled with a seed and greedy."""
    tts, _ = family["tiny-cv"]
    rows = [("ryan", "English", TEXT, None), ("eric", "auto", CHINESE, "用四川话说，开心一点。"),
            ("sohee", "Korean", TEXT * 2, INSTRUCT), ("", "auto", "Short.", "Whisper.")]
    speakers, languages, texts, instructs = (list(c) for c in zip(*rows, strict=True))
    for greedy in (True, False):
        batch = tts.generate_codes(texts, speaker=speakers, language=languages, instruct=instructs, greedy=greedy,
                                   seed=[11, 12, 13, 14], max_new_frames=24)
        for i, (speaker, language, text, instruct) in enumerate(rows):
            solo = tts.generate_codes(text, speaker=speaker, language=language, instruct=instruct, greedy=greedy,
                                      seed=11 + i, max_new_frames=24)
            np.testing.assert_array_equal(batch[i], solo)


def test_model_facts(family):
    cv, vd, small = family["tiny-cv"][0], family["tiny-vd"][0], family["tiny-cv-0b6"][0]
    assert (cv.model_type, vd.model_type, small.model_type) == ("custom_voice", "voice_design", "custom_voice")
    assert cv.speakers == sorted(["serena", "vivian", "uncle_fu", "ryan", "aiden", "ono_anna", "sohee", "eric",
                                  "dylan"])
    assert vd.speakers == [] and cv.supports_instruct and vd.supports_instruct and not small.supports_instruct
    assert "beijing_dialect" not in cv.languages and "chinese" in cv.languages
    assert cv.model.codec_encoder is None and cv.model.speaker_encoder is None  # nothing here encodes audio


def test_wrong_voice_kinds_are_clear_errors_and_run_nothing(family, tiny_checkpoint):
    cv, vd = family["tiny-cv"][0], family["tiny-vd"][0]
    base = Qwen3TTS.from_pretrained(tiny_checkpoint[1])
    xvec = VoicePrompt(np.ones(base.config.talker.hidden_size, np.float32))
    cases = [
        (lambda: base.generate_codes(TEXT, xvec, speaker="ryan"), "preset speakers are for CustomVoice"),
        (lambda: vd.generate_codes(TEXT, speaker="ryan", instruct=INSTRUCT), "no preset speakers"),
        (lambda: cv.generate_codes(TEXT, VoicePrompt(np.ones(48, np.float32)), speaker="ryan"),
         "a voice prompt is for Base models"),
        (lambda: cv.generate_codes(TEXT, speaker="bob"), "unknown speaker 'bob'.*'aiden'"),
        (lambda: cv.generate_codes(TEXT), "a speaker is required"),
        (lambda: cv.create_voice_prompt((np.zeros(24000, np.float32), 24000)), "only Base models"),
        (lambda: vd.create_voice_prompt((np.zeros(24000, np.float32), 24000)), "only Base models"),
        (lambda: cv.generate_codes(TEXT, speaker="dylan", language="beijing_dialect"), "is a dialect"),
        (lambda: base.generate_codes(TEXT, xvec, instruct="Be happy."), "instruct is for"),
        # one bad row of a batch: the whole batch refused before anything runs
        (lambda: cv.generate_codes([TEXT, TEXT], speaker=["ryan", "nobody"]), "unknown speaker 'nobody'"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    engine = cv.batch_engine(1)
    with pytest.raises(ValueError, match="unknown speaker"):
        engine.admit(0, GenerationRequest(TEXT, speaker="nobody"))
    assert engine.free_slots() == [0]


def test_batch_engine_requests_take_speaker_and_instruct(family):
    tts, _ = family["tiny-cv"]
    engine = tts.batch_engine(2)
    engine.admit(0, GenerationRequest(TEXT, speaker="ryan", language="English", greedy=True, max_new_frames=8))
    engine.admit(1, GenerationRequest(TEXT, speaker="serena", instruct=INSTRUCT, greedy=True, max_new_frames=8))
    codes = {0: [], 1: []}
    while engine.active_slots():
        for slot, out in engine.step().items():
            codes[slot].append(out.codes)
    for slot, (speaker, instruct, language) in enumerate((("ryan", None, "English"), ("serena", INSTRUCT, "auto"))):
        solo = tts.generate_codes(TEXT, speaker=speaker, instruct=instruct, language=language, greedy=True,
                                  max_new_frames=8)
        np.testing.assert_array_equal(np.concatenate(codes[slot]), solo)
