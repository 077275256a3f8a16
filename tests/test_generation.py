"""Generation through the public API against the reference's own `generate_voice_clone`.

Greedy decoding must reproduce the reference's codes token for token in all four prompt
layouts; the reference is handed the very same voice prompt (codes + x-vector) so that this
file tests the talker, code predictor, prompt and sampling path, while one test also lets
the reference build the prompt from the audio itself.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from qwen3tts_jax import Qwen3TTS, VoicePrompt

TEXT = "Hello world, this is a parity test."


@pytest.fixture(scope="module")
def clip():
    t = np.arange(2 * 24000) / 24000
    rng = np.random.default_rng(0)
    return (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


class Reference:
    """The reference wrapper plus the codes its `generate` returned on the last call."""

    def __init__(self, wrapper):
        self.wrapper = wrapper
        self.codes = None
        original = wrapper.model.generate

        def generate(*args, **kwargs):
            out = original(*args, **kwargs)
            self.codes = [c.numpy() for c in out[0]]
            return out
        wrapper.model.generate = generate

    def clone(self, text, voice: VoicePrompt, language, max_new_frames, non_streaming=False, **kw):
        from qwen_tts.inference.qwen3_tts_model import VoiceClonePromptItem

        icl = voice.ref_codes is not None
        item = VoiceClonePromptItem(
            ref_code=torch.from_numpy(voice.ref_codes).long() if icl else None,
            ref_spk_embedding=torch.from_numpy(voice.speaker_embedding), x_vector_only_mode=not icl,
            icl_mode=icl, ref_text=voice.ref_text)
        texts = [text] if isinstance(text, str) else text
        wavs, _ = self.wrapper.generate_voice_clone(
            texts, language=language, voice_clone_prompt=[item] * len(texts), do_sample=False,
            subtalker_dosample=False, max_new_tokens=max_new_frames + 1, non_streaming_mode=non_streaming, **kw)
        return self.codes, wavs


@pytest.fixture(scope="module")
def setup(checkpoints, reference_of, clip):
    hf, converted = checkpoints.get("tiny", 0)
    tts = Qwen3TTS.from_pretrained(converted)
    icl = tts.create_voice_prompt((clip, 24000), ref_text="Okay. Yeah.")
    return tts, Reference(reference_of(hf)), icl, VoicePrompt(icl.speaker_embedding)


@pytest.mark.parametrize("mode", ["icl", "xvector"])
@pytest.mark.parametrize("non_streaming", [False, True], ids=["streaming-text", "non-streaming-text"])
@pytest.mark.parametrize("language", ["English", "Chinese", "auto"])
def test_greedy_codes_equal_the_reference(setup, mode, non_streaming, language):
    """40 frames in each of the four prompt layouts, two languages and auto."""
    tts, ref, icl, xvec = setup
    voice = icl if mode == "icl" else xvec
    ref_codes, _ = ref.clone(TEXT, voice, language, 40, non_streaming)
    ours = tts.generate_codes(TEXT, voice, language, greedy=True, max_new_frames=40,
                              non_streaming_text=non_streaming)
    np.testing.assert_array_equal(ours, ref_codes[0])  # 40 frames, or fewer when both stop at EOS
    assert ours.shape[1] == 16 and 2 <= len(ours) <= 40 and ours.dtype == np.int32


def test_long_greedy_run_and_waveform_match(setup):
    """120 frames; the waveform through `decode_codes` equals the reference's output."""
    tts, ref, icl, _ = setup
    ref_codes, ref_wavs = ref.clone(TEXT * 3, icl, "English", 120)
    ours = tts.generate_codes(TEXT * 3, icl, "English", greedy=True, max_new_frames=120)
    np.testing.assert_array_equal(ours, ref_codes[0])
    wav, sr = tts.decode_codes(ours, icl.ref_codes)
    assert sr == 24000 and wav.shape == ref_wavs[0].shape
    from tests.helpers import rel_err
    assert rel_err(wav, ref_wavs[0]) < 1e-4


@pytest.fixture(scope="module")
def released_format(checkpoints, reference_of, clip):
    """A checkpoint saved in bfloat16 like the released ones: the float32 model packs its
    weights back to bfloat16 (losslessly) and multiplies them with the CPU kernel."""
    hf, converted = checkpoints.get("tiny", 2, saved_as="bfloat16")
    tts = Qwen3TTS.from_pretrained(converted)
    icl = tts.create_voice_prompt((clip, 24000), ref_text="Okay. Yeah.")
    return tts, Reference(reference_of(hf)), icl


@pytest.mark.parametrize("mode", ["icl", "xvector"])
def test_greedy_codes_equal_the_reference_with_packed_weights(released_format, mode):
    tts, ref, icl = released_format
    voice = icl if mode == "icl" else VoicePrompt(icl.speaker_embedding)
    ref_codes, _ = ref.clone(TEXT * 2, voice, "English", 60)
    ours = tts.generate_codes(TEXT * 2, voice, "English", greedy=True, max_new_frames=60)
    parts = tts.decode_parts(rows=1)  # what a one-row engine decodes with
    talker = nnx.merge(parts.spec.talker_def, parts.weights.talker)
    assert talker.codec_head.weight[...].dtype == talker.layers[0].mlp.up_proj.weight[...].dtype == jnp.bfloat16
    assert talker.codec_head.packed and talker.layers[0].mlp.up_proj.packed
    assert parts.spec.packed_heads and parts.weights.heads[0].dtype == jnp.bfloat16
    np.testing.assert_array_equal(ours, ref_codes[0])
    assert len(ours) >= 2


def test_packed_heads_reach_the_cpu_kernel(released_format):
    """The frame step of a packed engine multiplies the code predictor's 15 heads with the kernel,
    never widening them back to float32 first; an 8-row engine (XLA's float32 dot) calls no kernel."""
    import jax

    from qwen3tts_jax import generation

    tts, _, _ = released_format
    p = tts.config.code_predictor

    def frame_step_ops(rows: int) -> str:
        engine = tts.batch_engine(rows)
        step = lambda state: generation.generate_frames(engine.spec, engine.weights, state, 1, 128)  # noqa: E731
        return str(jax.make_jaxpr(step)(engine.state))
    packed = frame_step_ops(1)
    assert f"f32[{p.vocab_size},{p.hidden_size}] = convert_element_type" not in packed  # no widened head
    assert packed.count("ffi_call") >= p.num_code_groups - 1
    assert "ffi_call" not in frame_step_ops(8)


def test_reference_builds_its_own_prompt_from_the_audio(setup, clip):
    """End to end: the reference encodes the clip itself (Mimi codes, x-vector, tokenizer)."""
    tts, ref, icl, _ = setup
    ref.wrapper.generate_voice_clone(TEXT, language="German", ref_audio=(clip, 24000), ref_text="Okay. Yeah.",
                                     do_sample=False, subtalker_dosample=False, max_new_tokens=17)
    ours = tts.generate_codes(TEXT, icl, "German", greedy=True, max_new_frames=16)
    np.testing.assert_array_equal(ours, ref.codes[0])


def test_eos_stops_like_the_reference(checkpoints, reference_of, tmp_path):
    """Make EOS win after a few frames (its codec_head row scaled from a token the model picks):
    both stop at the same frame, EOS is never a frame, and EOS is blocked for 2 tokens."""
    import shutil

    from qwen3tts_jax.convert import convert_checkpoint
    from qwen3tts_jax.convert.safetensors_reader import SafetensorsFile, write_safetensors

    hf, converted = checkpoints.get("tiny", 1)
    tts = Qwen3TTS.from_pretrained(converted)
    voice = VoicePrompt(np.random.default_rng(1).standard_normal(tts.config.talker.hidden_size).astype(np.float32))
    first = tts.generate_codes(TEXT, voice, "English", greedy=True, max_new_frames=40)
    src = Path(shutil.copytree(hf, tmp_path / "eos-hf"))
    f = SafetensorsFile(src / "model.safetensors")
    tensors = {k: f.get(k) for k in f.shapes}
    head = tensors["talker.codec_head.weight"]
    head[2150] = 1.3 * head[int(first[6, 0])]
    write_safetensors(src / "model.safetensors", tensors)
    tts = Qwen3TTS.from_pretrained(convert_checkpoint(src, tmp_path / "eos-jax", dtype="float32"))
    ours = tts.generate_codes(TEXT, voice, "English", greedy=True, max_new_frames=40)
    ref_codes, _ = Reference(reference_of(src)).clone(TEXT, voice, "English", 40)
    np.testing.assert_array_equal(ours, ref_codes[0])
    assert 2 <= len(ours) < 40
    assert not (ours[:, 0] == 2150).any()


def test_batch_rows_are_independent(setup):
    """A batch of different texts, voices, layouts and languages equals each row alone."""
    tts, _, icl, xvec = setup
    texts = [TEXT, "Short.", "A third, longer sentence for the batch to carry along."]
    voices = [icl, xvec, icl]
    batch = tts.generate_codes(texts, voices, ["English", "auto", "French"], greedy=True, max_new_frames=12)
    for text, voice, lang, got in zip(texts, voices, ["English", "auto", "French"], batch, strict=True):
        alone = tts.generate_codes(text, voice, lang, greedy=True, max_new_frames=12)
        np.testing.assert_array_equal(got, alone)


def test_sampling_is_seeded(setup):
    tts, _, icl, _ = setup
    a = tts.generate_codes(TEXT, icl, "English", seed=5, max_new_frames=10)
    b = tts.generate_codes(TEXT, icl, "English", seed=5, max_new_frames=10)
    c = tts.generate_codes(TEXT, icl, "English", seed=6, max_new_frames=10)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() < 2048


def test_stream_concatenation_equals_synthesize(setup):
    tts, _, icl, xvec = setup
    for voice in (icl, xvec):
        wav, sr = tts.synthesize(TEXT, voice, "English", seed=3, max_new_frames=15)
        chunks = list(tts.stream(TEXT, voice, "English", seed=3, max_new_frames=15))
        assert len(chunks) == 15 and all(len(c) == 1920 for c in chunks)
        np.testing.assert_array_equal(np.concatenate(chunks), wav)
        # ...and the streaming decoder agrees with one causal pass of the codec decoder.
        from qwen3tts_jax import codec_decoder

        codes = tts.generate_codes(TEXT, voice, "English", seed=3, max_new_frames=15)
        full = codes if voice.ref_codes is None else np.concatenate([voice.ref_codes, codes])
        one_pass = np.asarray(codec_decoder.decode(tts.model.codec_decoder, full[None]))[0]
        np.testing.assert_allclose(wav, one_pass[len(full) * 1920 - len(wav):], atol=1e-4)


def test_bad_requests_fail_clearly(setup):
    tts, _, icl, _ = setup
    with pytest.raises(ValueError, match="text is empty"):
        tts.generate_codes("   ", icl)
    with pytest.raises(ValueError, match="unsupported language"):
        tts.generate_codes(TEXT, icl, "Klingon")
    with pytest.raises(ValueError, match="speaker_embedding"):
        tts.generate_codes(TEXT, VoicePrompt(np.zeros(7, np.float32)))
    with pytest.raises(ValueError, match="voice prompt is required"):
        tts.generate_codes(TEXT, None)
    with pytest.raises(ValueError, match="temperature"):
        tts.generate_codes(TEXT, icl, temperature=0.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        tts.generate_codes(TEXT, icl, temprature=0.5)


def test_voice_prompt_round_trip(setup, tmp_path):
    _, _, icl, xvec = setup
    for voice in (icl, xvec):
        voice.save(tmp_path / "v.npz")
        back = VoicePrompt.load(tmp_path / "v.npz")
        np.testing.assert_array_equal(back.speaker_embedding, voice.speaker_embedding)
        assert back.ref_text == voice.ref_text
        assert (back.ref_codes is None) == (voice.ref_codes is None)
        if voice.ref_codes is not None:
            np.testing.assert_array_equal(back.ref_codes, voice.ref_codes)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a voice prompt"):
        VoicePrompt.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="ref_text"):
        VoicePrompt(icl.speaker_embedding, icl.ref_codes, None)

