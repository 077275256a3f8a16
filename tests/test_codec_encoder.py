"""The speech tokenizer's encoder (Mimi) against the reference (REFERENCE-FACTS 2.6, 4 "Encode", 6.15, 6.18).

Codes must be identical. The only tolerated difference is a distance tie: float32 sums in
a different order can flip the argmin between two codebook rows whose distances agree to
~1e-6 relative. Any mismatch is checked to be such a tie (from the reference's own residual
at that layer); later layers of that frame may then differ, as the residual differs.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from qwen3tts_jax.convert.converter import abstract_targets, map_state_dict, plan

from qwen3tts_jax import components
from qwen3tts_jax.audio import check_pcm, load_audio_24k
from qwen3tts_jax.codec_encoder import _encode_jit, encode
from qwen3tts_jax.config import (
    CodecDecoderConfig,
    CodecEncoderConfig,
    CodePredictorConfig,
    Qwen3TTSConfig,
    SpeechTokenizerConfig,
    TalkerConfig,
)
from qwen3tts_jax.params import assign
from tests.reference.checkpoints import BASE_06B

DATA = Path(__file__).resolve().parent / "data"
SR = 24000
SPF = 1920
VALID = 16
# The released encoder config shrunk (sample rate, strides, frame rate, quantizer counts kept).
# sliding_window 4 (real: 250): the reference's sdpa mask ignores it, so codes must still match
# a full causal transformer, which a window this small would break.
_TINY = dict(num_filters=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=8, intermediate_size=64, codebook_dim=16, vector_quantization_hidden_dimension=16,
             upsample_groups=32, sliding_window=4)


def _hf_encoder_config(**overrides) -> dict:
    tok = json.loads((BASE_06B / "speech_tokenizer" / "config.json").read_text())
    return {**tok["encoder_config"], **overrides}


def _full_config(enc: CodecEncoderConfig) -> Qwen3TTSConfig:
    return Qwen3TTSConfig(talker=TalkerConfig(), code_predictor=CodePredictorConfig(), speaker_encoder=None,
                          speech_tokenizer=SpeechTokenizerConfig(decoder=CodecDecoderConfig(), encoder=enc))


def _reference_module(hf: dict, seed: int):
    """`Qwen3TTSTokenizerV2Encoder` with seeded weights and random codebooks (zero at init)."""
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Encoder
    from transformers import MimiConfig

    torch.manual_seed(seed)
    ref = Qwen3TTSTokenizerV2Encoder(MimiConfig(**hf)).eval()
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(("layernorm.weight", "layernorm.bias", "layer_scale.scale")):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))  # constant at init: make swaps visible
        for name, b in ref.named_buffers():
            if name.endswith("cluster_usage"):
                b.copy_(0.5 + 1.5 * torch.rand(b.shape, generator=gen))
                # a few rows below the 1e-5 clamp: embed_sum / usage would blow up without it
                b[:8] = 1e-8
            elif name.endswith("embed_sum"):
                b.copy_(torch.randn(b.shape, generator=gen))
                b[:8] *= 1e-5
    return ref


def _ours(ref, hf: dict):
    cfg = CodecEncoderConfig.from_hf_config(hf, VALID)
    full = _full_config(cfg)
    arrays = {"speech_tokenizer.encoder." + k: v.detach().numpy() for k, v in ref.state_dict().items()}
    flat = map_state_dict(arrays, full, names=["codec_encoder"])["codec_encoder"]
    return assign(components.abstract("codec_encoder", full), flat)


def _reference_codes(ref, pcm: np.ndarray) -> np.ndarray:
    """What `Qwen3TTSTokenizerV2Model.encode` returns for one unpadded clip: `[ceil(L/1920), 16]`."""
    with torch.no_grad():
        codes = ref.encode(torch.from_numpy(pcm)[None, None], return_dict=True).audio_codes
    return codes[0, :VALID, : -(-len(pcm) // SPF)].T.numpy().astype(np.int32)


def _reference_latent(ref, pcm: np.ndarray) -> torch.Tensor:
    """The downsampled latent `[1, hidden, T]` the quantizer sees."""
    with torch.no_grad():
        x = ref.encoder(torch.from_numpy(pcm)[None, None])
        x = ref.encoder_transformer(x.transpose(1, 2), return_dict=True).last_hidden_state.transpose(1, 2)
        return ref.downsample(x)


def assert_same_codes(ref, pcm: np.ndarray, ours: np.ndarray, expected: np.ndarray, tol: float = 1e-6) -> int:
    """Codes equal, or each differing frame's first difference is a distance tie. Returns #tie frames."""
    assert ours.shape == expected.shape and ours.dtype == np.int32
    frames = np.nonzero((ours != expected).any(axis=1))[0]
    if frames.size == 0:
        return 0
    z = _reference_latent(ref, pcm)[0].double()  # [hidden, T]
    q = ref.quantizer
    for t in frames:
        k = int(np.argmax(ours[t] != expected[t]))
        rvq = q.semantic_residual_vector_quantizer if k == 0 else q.acoustic_residual_vector_quantizer
        first = 0 if k == 0 else 1
        r = rvq.input_proj.weight[:, :, 0].double() @ z[:, t]
        for j in range(first, k):  # the reference residual before layer k
            r = r - rvq.layers[j - first].codebook.embed.double()[int(expected[t, j])]
        embed = rvq.layers[k - first].codebook.embed.double()
        e_ref, e_ours = embed[int(expected[t, k])], embed[int(ours[t, k])]
        d2_ref, d2_ours = float(((r - e_ref) ** 2).sum()), float(((r - e_ours) ** 2).sum())
        # torch.cdist's matmul form |r|^2 + |e|^2 - 2 r.e carries float32 error relative to
        # those norms, not to the distance: a tie is a difference within that error.
        scale = float((r ** 2).sum()) + max(float((e_ref ** 2).sum()), float((e_ours ** 2).sum()))
        assert abs(d2_ref - d2_ours) <= tol * scale, (
            f"frame {t} quantizer {k}: code {ours[t, k]} vs reference {expected[t, k]} is not a tie "
            f"(squared distances {d2_ours} vs {d2_ref}, norms {scale})")
    return int(frames.size)


def _speech_24k() -> np.ndarray:
    return load_audio_24k(DATA / "speech_16k.wav")


def _inputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(3 * SR + 517) / SR
    sweep = 0.5 * np.sin(2 * np.pi * (50 * t + (4000 - 50) / (2 * t[-1]) * t * t))
    gate = (np.sin(2 * np.pi * 2.5 * t) > 0.3).astype(np.float64)
    bursts = gate * rng.standard_normal(t.size) * 0.3
    return {
        "noise": (0.1 * rng.standard_normal(2 * SR + 1234)).astype(np.float32),
        "loud_noise": rng.uniform(-1, 1, SR + 1).astype(np.float32),
        "sweep": sweep.astype(np.float32),
        "bursts": bursts.astype(np.float32),
        "speech": _speech_24k(),
        "silence": np.zeros(5000, np.float32),
    }


@functools.cache
def _pair(seed: int):
    hf = _hf_encoder_config(**_TINY)
    ref = _reference_module(hf, seed)
    return seed, ref, _ours(ref, hf)


@pytest.fixture(scope="module", params=[0, 1, 2])
def pair(request):
    return _pair(request.param)


def test_codes_match_reference(pair):
    seed, ref, ours = pair
    ties = 0
    for name, pcm in _inputs(seed).items():
        expected = _reference_codes(ref, pcm)
        got = encode(ours, pcm)
        assert got.shape == (-(-len(pcm) // SPF), VALID), name
        ties += assert_same_codes(ref, pcm, got, expected)
        if name != "silence":
            assert len(np.unique(expected[:, 0])) > 1, f"{name}: degenerate codes prove nothing"
    assert ties <= 2, f"{ties} tie frames: far more than float32 rounding explains"


@pytest.mark.parametrize("length", [1, 959, 960, 1919, 1920, 1921, 3839, 3840, 3841, 24000, 30000])
def test_frame_count_and_last_frame(pair, length):
    """T = ceil(L/1920) and the partial last frame matches: padding to the bucket must not leak in."""
    seed, ref, ours = pair
    pcm = (0.2 * np.random.default_rng(length + seed).standard_normal(length)).astype(np.float32)
    expected = _reference_codes(ref, pcm)
    got = encode(ours, pcm)
    assert got.shape == (-(-length // SPF), VALID)
    assert_same_codes(ref, pcm, got, expected)


def test_long_clip():
    """20 s (250 frames, 500 transformer positions): full causal attention, no window."""
    _, ref, ours = _pair(0)
    rng = np.random.default_rng(7)
    pcm = np.concatenate([_speech_24k(), 0.1 * rng.standard_normal(20 * SR - len(_speech_24k()))]).astype(np.float32)
    expected = _reference_codes(ref, pcm)
    assert expected.shape == (250, VALID)
    assert assert_same_codes(ref, pcm, encode(ours, pcm), expected) <= 2


def test_batch_rows_of_different_lengths(pair):
    """The module on a right-padded batch equals the reference on each unpadded row."""
    seed, ref, ours = pair
    rng = np.random.default_rng(seed)
    lengths = [1, 2500, 7 * SPF + 3, 9 * SPF]
    buf = np.zeros((len(lengths), 16 * SPF), np.float32)
    for i, n in enumerate(lengths):
        buf[i, :n] = 0.1 * rng.standard_normal(n)
    codes, frames = _encode_jit(*nnx.split(ours), buf, np.asarray(lengths, np.int32))
    np.testing.assert_array_equal(np.asarray(frames), [-(-n // SPF) for n in lengths])
    for i, n in enumerate(lengths):
        got = np.asarray(codes[i, : -(-n // SPF)], np.int32)
        assert_same_codes(ref, buf[i, :n], got, _reference_codes(ref, buf[i, :n]))


def test_buckets_bound_recompiles(pair):
    _, _, ours = pair
    encode(ours, np.zeros(17 * SPF, np.float32))
    before = _encode_jit._cache_size()
    for n in (17 * SPF + 1, 20 * SPF, 32 * SPF):  # all in the 32-frame bucket
        encode(ours, np.full(n, 0.01, np.float32))
    assert _encode_jit._cache_size() == before


@pytest.mark.parametrize("bad", [np.zeros(0, np.float32), np.zeros((2, 3000), np.float32),
                                 np.array([0.0, np.nan, 0.0], np.float32), np.array([np.inf] * 10, np.float32),
                                 np.zeros(100, np.int16), np.float32(0.5)])
def test_encode_rejects_bad_input(pair, bad):
    _, _, ours = pair
    with pytest.raises(ValueError):
        encode(ours, bad)
    with pytest.raises(ValueError):
        check_pcm(bad)


def test_table_covers_every_real_key():
    """The released key set (meta device, real config): mapped or explicitly ignored, shapes checked."""
    from tests.reference.checkpoints import hf_configs, meta_state_shapes

    main, tok = hf_configs("real-0.6b")
    shapes = {k: v for k, v in meta_state_shapes(main, tok).items() if k.startswith("speech_tokenizer.encoder.")}
    cfg = Qwen3TTSConfig.from_hf_config(main, tok)
    assigned = plan(shapes, abstract_targets(cfg, "float32", ["codec_encoder"]))
    ignored = sorted(set(shapes) - set(assigned))
    unused_acoustic = [k for k in ignored if ".acoustic_residual_vector_quantizer.layers." in k
                       and not k.endswith("initialized")]
    assert len(unused_acoustic) == 2 * 16  # layers 15..30: embed_sum + cluster_usage
    assert sum(k.endswith("output_proj.weight") for k in ignored) == 2
    assert sum(k.endswith("initialized") for k in ignored) == 32
    assert len(ignored) == 32 + 2 + 32


def test_real_size_shapes():
    """The released config builds and traces (no allocation): 1 s -> 13 frames of 16 codes."""
    tok = json.loads((BASE_06B / "speech_tokenizer" / "config.json").read_text())
    cfg = Qwen3TTSConfig.from_hf_config(json.loads((BASE_06B / "config.json").read_text()), tok)
    module = components.abstract("codec_encoder", cfg)
    assert module.samples_per_frame == SPF
    graphdef, state = nnx.split(module)
    codes, frames = jax.eval_shape(lambda s, x, n: nnx.merge(graphdef, s)(x, n), state,
                                   jax.ShapeDtypeStruct((1, 16 * SPF), np.float32),
                                   jax.ShapeDtypeStruct((1,), np.int32))
    assert codes.shape == (1, 16, VALID) and codes.dtype == np.int32


def test_end_to_end_through_converter(tiny_checkpoint, reference_of):
    """Real converter + `qwen3tts_jax.load` vs the reference wrapper's `speech_tokenizer.encode`."""
    import qwen3tts_jax
    from qwen3tts_jax.audio import load_audio, to_24k

    hf_dir, out_dir = tiny_checkpoint
    model = qwen3tts_jax.load(out_dir, names=["codec_encoder"])
    tokenizer = reference_of(hf_dir).model.speech_tokenizer
    path = DATA / "speech_16k.wav"
    wav16, sr = load_audio(path)
    cases = {
        "path": (str(path), None, load_audio_24k(path)),
        "16k array": (wav16, sr, to_24k(wav16, sr)),
        "24k noise": (n := (0.1 * np.random.default_rng(3).standard_normal(SR + 77)).astype(np.float32), SR, n),
    }
    for name, (src, rate, ours_in) in cases.items():
        expected = tokenizer.encode(src, sr=rate).audio_codes[0].numpy().astype(np.int32)
        got = encode(model.codec_encoder, ours_in)
        assert got.shape == expected.shape, name
        assert assert_same_codes(tokenizer.model.encoder, ours_in, got, expected) <= 1, name


def test_encode_batch_equals_single_clips(pair):
    from qwen3tts_jax.codec_encoder import encode_batch

    seed, _, ours = pair
    rng = np.random.default_rng(seed + 10)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (1, 3000, 5 * SPF + 1)]
    got = encode_batch(ours, clips)
    assert [g.shape for g in got] == [(1, VALID), (2, VALID), (6, VALID)]
    for clip, codes in zip(clips, got, strict=True):
        np.testing.assert_array_equal(codes, encode(ours, clip))
    assert encode_batch(ours, []) == []
    with pytest.raises(ValueError, match="audio 1"):
        encode_batch(ours, [clips[0], np.zeros(0, np.float32)])


@pytest.mark.parametrize("key, value", [("pad_mode", "reflect"), ("use_conv_shortcut", True),
                                        ("attention_bias", True), ("audio_channels", 2), ("hidden_act", "silu"),
                                        ("use_causal_conv", False)])
def test_config_rejects_unsupported_settings(key, value):
    with pytest.raises(ValueError, match="codec encoder"):
        CodecEncoderConfig.from_hf_config(_hf_encoder_config(**{key: value}))


def test_config_frame_rate_defaults_like_mimi():
    hf = _hf_encoder_config()
    del hf["_frame_rate"]
    assert CodecEncoderConfig.from_hf_config(hf).frame_rate == 12.5  # 24000 / (960 * 2)
    hf["upsampling_ratios"] = [8, 5, 4, 3]  # hop 480 -> 25 Hz after the downsample
    assert CodecEncoderConfig.from_hf_config(hf).frame_rate == 25.0
