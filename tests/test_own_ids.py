"""Every id from the checkpoint's own files: a checkpoint whose tokenizer, tts_* ids, codec
control and language ids and vocabulary sizes all differ from the released ones.

The bug this guards against: the role ids of "<|im_start|>assistant\\n" were constants of the
released tokenizer (77091, 198). On a checkpoint with a smaller vocabulary they index past the
text embedding, the jitted gather returns NaN, and generation silently makes all-zero codes.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from qwen3tts_jax import Qwen3TTS, VoicePrompt
from tests.reference import small_tokenizer
from tests.test_generation import TEXT, Reference

RELEASED_ROLE_IDS = (151644, 77091, 198)


@pytest.fixture(scope="module")
def clip():
    t = np.arange(2 * 24000) / 24000
    return (0.3 * np.sin(2 * np.pi * (220 + 250 * t) * t)).astype(np.float32)


@pytest.fixture(scope="module")
def own(checkpoints, reference_of, clip):
    hf, converted = checkpoints.get("tiny-own-ids", 0)
    tts = Qwen3TTS.from_pretrained(converted)
    icl = tts.create_voice_prompt((clip, 24000), ref_text="Okay. Yeah.")
    return tts, Reference(reference_of(hf)), icl, converted


def test_the_checkpoint_shares_no_id_with_the_released_files(own):
    tts, _, _, _ = own
    ids = small_tokenizer.ids()
    assert tts.prompts.role_ids == (ids["<|im_start|>"], ids["assistant"], ids["newline"])
    assert not set(tts.prompts.role_ids) & set(RELEASED_ROLE_IDS)
    t = tts.config.talker
    assert t.text_vocab_size < 77091 and tts.config.tts_pad_token_id == ids["<tts_pad>"] != 151671
    assert t.vocab_size != 3072 and t.codec_bos_id != 2149 and t.language_id("english") != 2050


@pytest.mark.parametrize("mode", ["icl", "xvector"])
@pytest.mark.parametrize("non_streaming", [False, True], ids=["streaming-text", "non-streaming-text"])
@pytest.mark.parametrize("language", ["English", "auto"])
def test_greedy_codes_equal_the_reference(own, mode, non_streaming, language):
    tts, ref, icl, _ = own
    voice = icl if mode == "icl" else VoicePrompt(icl.speaker_embedding)
    ref_codes, _ = ref.clone(TEXT, voice, language, 40, non_streaming)
    ours = tts.generate_codes(TEXT, voice, language, greedy=True, max_new_frames=40,
                              non_streaming_text=non_streaming)
    np.testing.assert_array_equal(ours, ref_codes[0])
    assert 2 <= len(ours) <= 40 and len(np.unique(ours)) > 10  # real codes, not a NaN run of zeros


def _with_config(converted, tmp_path, edit, name="bad"):
    """A copy of the converted folder with `edit(config.json dict)` applied."""
    dst = tmp_path / name
    shutil.copytree(converted, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("what,edit,needle", [
    ("tts_pad_token_id", lambda c: c.update(tts_pad_token_id=151671), "tts_pad_token_id 151671"),
    ("codec_bos_id", lambda c: c["talker_config"].update(codec_bos_id=3000), "codec_bos_id 3000"),
    ("language id", lambda c: c["talker_config"]["codec_language_id"].update(english=4000), "'english'] 4000"),
    ("text_vocab_size", lambda c: c["talker_config"].update(text_vocab_size=900), "text_vocab_size = 900"),
])
def test_an_id_outside_its_table_is_a_clear_error_at_load(own, tmp_path, what, edit, needle):
    """The released id 151671 for tts_pad, a codec id past `vocab_size`, a tokenizer bigger than
    the text embedding: each is a ValueError naming the file and the id, before any generation.
    (A smaller `text_vocab_size` also changes a parameter's shape: the check comes first.)"""
    _, _, _, converted = own
    bad = _with_config(converted, tmp_path, edit)
    with pytest.raises(ValueError, match="config.json") as err:
        Qwen3TTS.from_pretrained(bad)
    assert needle in str(err.value) and str(bad) in str(err.value)


def test_reference_codes_outside_the_codebooks_are_refused(own):
    tts, _, icl, _ = own
    too_big = np.array(icl.ref_codes)
    too_big[0, 3] = tts.config.code_predictor.vocab_size
    voice = VoicePrompt(icl.speaker_embedding, too_big, icl.ref_text)
    with pytest.raises(ValueError, match="codebooks"):
        tts.generate_codes(TEXT, voice, "English", greedy=True, max_new_frames=4)
    engine = tts.batch_engine(1)
    with pytest.raises(ValueError, match="codebooks"):
        from qwen3tts_jax import GenerationRequest
        engine.admit(0, GenerationRequest(TEXT, voice, "English"))
    assert engine.free_slots() == [0]  # nothing half-admitted


def test_a_released_constant_in_a_layout_is_refused_not_embedded_as_nan(own):
    """The old bug's layout (the released role ids on this checkpoint) fails loudly before jit."""
    from qwen3tts_jax.prompt import build_layout, check_layout

    tts, _, _, _ = own
    layout = build_layout(tts.config, RELEASED_ROLE_IDS, tts.tokenizer.text_ids(TEXT), language="English")
    with pytest.raises(ValueError, match="text id 151644 is outside its embedding"):
        check_layout(tts.config, layout)
