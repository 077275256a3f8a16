"""Codec decoder (codes -> PCM) parity with the reference `Qwen3TTSTokenizerV2Decoder`.

The reference module is built directly from a decoder config, randomized (codebooks, norm
and Snake parameters, decoder weights rescaled to 0.75 N(0,1)/sqrt(fan_in): the default init
is degenerate) and mapped through the real conversion table (`qwen3tts_jax.convert.converter.map_state_dict`).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flax import nnx

import qwen3tts_jax
from qwen3tts_jax import codec_decoder as cd
from qwen3tts_jax.config import CodecDecoderConfig, Qwen3TTSConfig
from tests.helpers import rel_err

TOL = 1e-4
DATA = Path(__file__).resolve().parent / "data" / "hf-configs"
TOKENIZER_CONFIG = DATA / "Qwen3-TTS-Tokenizer-12Hz" / "config.json"

# Few samples per frame (12) so that long (> 300 frame) sequences stay cheap.
TINY = dict(codebook_size=64, codebook_dim=16, hidden_size=32, latent_dim=24, head_dim=8, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=48, num_hidden_layers=2, num_quantizers=16,
            upsample_rates=[2, 3], upsampling_ratios=[2], decoder_dim=16, sliding_window=72)
# The real upsampling structure (1920 samples per frame) with tiny widths.
TINY_REAL_RATES = dict(TINY, num_key_value_heads=4, decoder_dim=32, upsample_rates=[8, 5, 4, 3],
                       upsampling_ratios=[2, 2])


def real_decoder_hf() -> dict:
    return json.loads(TOKENIZER_CONFIG.read_text())["decoder_config"]


def reference_decoder(hf: dict, seed: int):
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import (
        Qwen3TTSTokenizerV2DecoderConfig,
    )
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Decoder

    cfg = Qwen3TTSTokenizerV2DecoderConfig(**hf)
    cfg.codebook_dim, cfg.head_dim = hf["codebook_dim"], hf["head_dim"]  # not __init__ arguments
    torch.manual_seed(seed)
    ref = Qwen3TTSTokenizerV2Decoder(cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("embedding_sum"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith("cluster_usage"):
                p.copy_(0.5 + 1.5 * torch.rand(p.shape, generator=gen))
            elif p.ndim == 1:  # norms, layer scales, gamma, Snake alpha/beta, biases
                p.add_(0.1 * max(float(p.abs().mean()), 0.1) * torch.randn(p.shape, generator=gen))
        for m in ref.modules():
            if isinstance(m, torch.nn.ConvTranspose1d):
                fan_in = m.in_channels * m.kernel_size[0] / m.stride[0]
            elif isinstance(m, torch.nn.Conv1d):
                fan_in = m.in_channels // m.groups * m.kernel_size[0]
            elif isinstance(m, torch.nn.Linear):
                fan_in = m.in_features
            else:
                continue
            m.weight.copy_(0.75 * torch.randn(m.weight.shape, generator=gen) / math.sqrt(fan_in))
    return ref


def whole_config(decoder_hf: dict) -> Qwen3TTSConfig:
    main = json.loads((DATA / "Qwen3-TTS-12Hz-0.6B-Base" / "config.json").read_text())
    tok = copy.deepcopy(json.loads(TOKENIZER_CONFIG.read_text()))
    tok["decoder_config"].update(decoder_hf)
    return Qwen3TTSConfig.from_hf_config(main, tok)


def converted(ref, decoder_hf: dict) -> cd.CodecDecoder:
    """The reference's weights through the real conversion table."""
    from qwen3tts_jax.convert.converter import map_state_dict

    from qwen3tts_jax.params import assign

    arrays = {"speech_tokenizer.decoder." + k: v.detach().numpy() for k, v in ref.state_dict().items()}
    cfg = whole_config(decoder_hf)
    flat = map_state_dict(arrays, cfg, names=["codec_decoder"])["codec_decoder"]
    abstract = nnx.eval_shape(lambda: cd.CodecDecoder(cfg.speech_tokenizer.decoder, rngs=nnx.Rngs(0)))
    return assign(abstract, flat)


_PAIRS: dict = {}


def pair(name: str, seed: int):
    """(reference, converted JAX decoder, hf dict), cached per (config, seed)."""
    if (name, seed) not in _PAIRS:
        hf = {"tiny": TINY, "tiny-real-rates": TINY_REAL_RATES}[name]
        ref = reference_decoder(hf, seed)
        _PAIRS[name, seed] = (ref, converted(ref, hf), hf)
    return _PAIRS[name, seed]


def random_codes(seed: int, batch: int, frames: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, size, (batch, frames, 16))


def reference_forward(ref, codes: np.ndarray, chunked: bool = False) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(codes).long().transpose(1, 2)
        out = ref.chunked_decode(x) if chunked else ref(x)
    return out.squeeze(1).numpy()


@pytest.mark.parametrize("name", ["tiny", "tiny-real-rates"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_pass_matches_reference(name, seed):
    ref, model, hf = pair(name, seed)
    frames = (1, 5, 90) if name == "tiny" else (1, 6)  # 90 > the 72-frame attention window
    for t in frames:
        codes = random_codes(seed, 2, t, hf["codebook_size"])
        expected = reference_forward(ref, codes)
        got = np.asarray(cd.decode(model, codes))
        assert got.shape == (2, t * model.cfg.samples_per_frame) == expected.shape
        assert np.sqrt(np.mean(expected ** 2)) > 1e-2  # a meaningful signal, not ~0
        assert rel_err(got, expected) < TOL, (t, rel_err(got, expected))


@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_decode_matches_reference_beyond_300_frames(seed):
    ref, model, hf = pair("tiny", seed)
    codes = random_codes(seed, 2, 677, hf["codebook_size"])  # chunks 0-300, 275-600, 575-677
    expected = reference_forward(ref, codes, chunked=True)
    got = np.asarray(cd.decode_chunked(model, codes))
    err = rel_err(got, expected)
    assert err < TOL
    # ...and it is not one pass: the 25-frame context is shorter than the 72-frame window.
    assert rel_err(np.asarray(cd.decode(model, codes)), expected) > max(20 * err, 1e-5)


def test_decode_to_list_matches_the_reference_model_decode():
    """-1 padding, valid lengths and trimming as `Qwen3TTSTokenizerV2Model.decode`."""
    ref, model, hf = pair("tiny-real-rates", 0)
    lengths = (5, 2, 0)
    codes = np.full((3, 5, 16), -1)
    for i, n in enumerate(lengths):
        codes[i, :n] = random_codes(i, 1, n, hf["codebook_size"])[0]
    # The reference's Model.decode: valid lengths, clamp, chunked_decode, trim.
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    with torch.no_grad():
        fake = type("M", (), {"decode_upsample_rate": 1920, "decoder": ref,
                              "config": type("C", (), {"return_dict": True})})()
        expected = Qwen3TTSTokenizerV2Model.decode(fake, torch.from_numpy(codes)).audio_values
    got = cd.decode_to_list(model, codes)
    assert [len(w) for w in got] == [n * 1920 for n in lengths] == [len(w) for w in expected]
    for g, e in zip(got[:2], expected[:2], strict=True):
        assert rel_err(g, e.numpy()) < TOL
    assert list(cd.valid_lengths(codes, model.cfg)) == [n * 1920 for n in lengths]


def test_bucketing_reuses_executables_and_padding_is_harmless():
    _, model, hf = pair("tiny", 0)
    codes = random_codes(3, 1, 40, hf["codebook_size"])
    full = np.asarray(cd.decode(model, codes))
    before = cd._forward._cache_size()
    for t in (33, 35, 40):  # all in the 48-frame bucket
        got = np.asarray(cd.decode(model, codes[:, :t]))
        np.testing.assert_allclose(got, full[:, :t * 12], rtol=1e-5, atol=1e-6)
    assert cd._forward._cache_size() == before


def test_bad_input_is_a_clear_value_error():
    _, model, hf = pair("tiny", 0)
    good = random_codes(0, 1, 4, hf["codebook_size"])
    with pytest.raises(ValueError, match="shape"):
        cd.decode(model, good[0])
    with pytest.raises(ValueError, match="shape"):
        cd.decode(model, good[..., :8])
    with pytest.raises(ValueError, match="integers"):
        cd.decode(model, good.astype(np.float32))
    for bad in (hf["codebook_size"], -2):
        codes = good.copy()
        codes[0, 1, 3] = bad
        with pytest.raises(ValueError, match="out of range"):
            cd.decode_chunked(model, codes)


def test_table_covers_every_real_decoder_key():
    """Key names and shapes of the released decoder (meta device) against the abstract module."""
    from qwen3tts_jax.convert.converter import abstract_targets, plan

    from tests.reference.checkpoints import hf_configs, meta_state_shapes

    main, tok = hf_configs("real-0.6b")
    shapes = {k: v for k, v in meta_state_shapes(main, tok).items() if k.startswith("speech_tokenizer.decoder.")}
    cfg = Qwen3TTSConfig.from_hf_config(main, tok)
    assignments = plan(shapes, abstract_targets(cfg, np.float32, ["codec_decoder"]))
    ignored = set(shapes) - set(assignments)
    assert ignored == {f"speech_tokenizer.decoder.quantizer.rvq_{p}.input_proj.weight" for p in ("first", "rest")}
    assert cfg.speech_tokenizer.decoder == CodecDecoderConfig.from_hf_config(real_decoder_hf())
    assert cfg.speech_tokenizer.decoder.head_dim == 64


def test_end_to_end_through_the_converter(tiny_checkpoint, reference_of):
    """Converted folder + `qwen3tts_jax.load` vs the reference wrapper's `speech_tokenizer.decode`."""
    hf, out = tiny_checkpoint
    model = qwen3tts_jax.load(out, ["codec_decoder"]).codec_decoder
    tokenizer = reference_of(hf).model.speech_tokenizer
    rng = np.random.default_rng(7)
    codes = [rng.integers(0, model.cfg.codebook_size, (n, 16)) for n in (7, 3)]
    expected, sr = tokenizer.decode([{"audio_codes": c} for c in codes])
    padded = np.full((2, 7, 16), -1)
    for i, c in enumerate(codes):
        padded[i, :len(c)] = c
    got = cd.decode_to_list(model, padded)
    assert sr == 24000
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        assert rel_err(g, e) < TOL


@pytest.mark.slow
def test_real_size_smoke():
    """The released decoder config: 25 frames (2 s) of random codes, parity and output sanity."""
    hf = real_decoder_hf()
    ref = reference_decoder(hf, 0)
    model = converted(ref, hf)
    codes = random_codes(0, 1, 25, 2048)
    got = np.asarray(cd.decode(model, codes))
    assert got.shape == (1, 48000)
    assert np.isfinite(got).all() and np.abs(got).max() <= 1.0
    expected = reference_forward(ref, codes)
    assert rel_err(got, expected) < TOL


@pytest.mark.parametrize("kernel,stride", [(2, 2), (4, 2), (10, 5), (16, 8), (6, 3)])
def test_causal_transposed_conv_layout(kernel, stride):
    """Block kernel + one valid conv == torch ConvTranspose1d with the last k - s samples cut."""
    from qwen3tts_jax.conv import (
        CausalConvTranspose1d,
        blocks_kernel_from_torch,
        blocks_kernel_to_torch,
        conv_transpose1d,
    )

    rng = np.random.default_rng(kernel)
    x = rng.standard_normal((2, 9, 6)).astype(np.float32)
    w = rng.standard_normal((6, 4, kernel)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    full = torch.nn.functional.conv_transpose1d(torch.from_numpy(x).transpose(1, 2), torch.from_numpy(w),
                                                torch.from_numpy(b), stride=stride).transpose(1, 2).numpy()
    np.testing.assert_allclose(conv_transpose1d(x, w.transpose(2, 0, 1), b, stride=stride), full,
                               rtol=1e-5, atol=1e-5)
    conv = CausalConvTranspose1d(6, 4, kernel, stride=stride, rngs=nnx.Rngs(0))
    conv.kernel.value = blocks_kernel_from_torch(w, stride)
    conv.bias.value = b
    m = kernel // stride
    got = conv(np.pad(x, ((0, 0), (m - 1, 0), (0, 0))))
    np.testing.assert_allclose(got, full[:, :9 * stride], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(blocks_kernel_to_torch(blocks_kernel_from_torch(w, stride)), w)


def test_export_inverts_the_table():
    """`convert.export` (Flax -> official layout) gives back the reference state_dict exactly."""
    from qwen3tts_jax.convert.export import to_source_tensors

    from qwen3tts_jax.params import flat_params

    ref, model, _ = pair("tiny", 0)
    exported = to_source_tensors({"codec_decoder": {k: np.asarray(v) for k, v in flat_params(model).items()}})
    expected = {"speech_tokenizer.decoder." + k: v.detach().numpy() for k, v in ref.state_dict().items()
                if ".input_proj." not in k or "pre_transformer" in k}
    assert set(exported) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
