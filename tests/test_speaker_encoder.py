"""The x-vector speaker encoder against the reference `Qwen3TTSSpeakerEncoder` (REFERENCE-FACTS 2.4, 6.17)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from qwen3tts_jax.convert.converter import map_state_dict

from qwen3tts_jax import components
from qwen3tts_jax.config import CodePredictorConfig, Qwen3TTSConfig, SpeakerEncoderConfig, TalkerConfig
from qwen3tts_jax.params import assign, flat_params
from qwen3tts_jax.speaker_encoder import (
    SpeakerEncoder,
    embed,
    embed_batch,
    min_frames,
    min_samples,
    validate_pcm,
)
from tests.helpers import rel_err, speech_like

SR = 24000
TINY = SpeakerEncoderConfig(enc_dim=48, enc_channels=(32, 32, 32, 32, 96), enc_attention_channels=16,
                            enc_res2net_scale=4, enc_se_channels=8)
REAL = SpeakerEncoderConfig()  # the released channel config, enc_dim 1024


def _reference_module(cfg: SpeakerEncoderConfig, seed: int, std: float | None):
    """The reference encoder with seeded random weights (`std`: N(0, std) instead of torch's init)."""
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSSpeakerEncoderConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSSpeakerEncoder

    kwargs = {f.name: list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v
              for f in dataclasses.fields(cfg)}
    torch.manual_seed(seed)
    ref = Qwen3TTSSpeakerEncoder(Qwen3TTSSpeakerEncoderConfig(**kwargs)).eval()
    if std is not None:
        with torch.no_grad():
            for p in ref.parameters():
                p.normal_(0.0, std)
    return ref


def _ours(ref, cfg: SpeakerEncoderConfig) -> SpeakerEncoder:
    """The reference's weights mapped through the conversion table."""
    full = Qwen3TTSConfig(talker=TalkerConfig(), code_predictor=CodePredictorConfig(), speaker_encoder=cfg,
                          speech_tokenizer=None)
    arrays = {"speaker_encoder." + k: v.detach().numpy() for k, v in ref.state_dict().items()}
    flat = map_state_dict(arrays, full, names=["speaker_encoder"])["speaker_encoder"]
    return assign(components.abstract("speaker_encoder", full), flat)


def _reference_embedding(ref, pcm: np.ndarray) -> np.ndarray:
    """MOD `extract_speaker_embedding` on a bare encoder."""
    from qwen_tts.core.models.modeling_qwen3_tts import mel_spectrogram

    with torch.no_grad():
        mels = mel_spectrogram(torch.from_numpy(pcm).unsqueeze(0), n_fft=1024, num_mels=128, sampling_rate=SR,
                               hop_size=256, win_size=1024, fmin=0, fmax=12000).transpose(1, 2)
        return ref(mels)[0].numpy()


def _clip(seed: int, samples: int) -> np.ndarray:
    return speech_like(seed, samples, SR)


@pytest.fixture(scope="module", params=[0, 1, 2])
def tiny_pair(request):
    seed = request.param
    ref = _reference_module(TINY, seed, std=0.1)
    return seed, ref, _ours(ref, TINY)


@pytest.mark.parametrize("samples", [min_samples(TINY), 5000, 3 * SR + 17, 10 * SR + 123])
def test_embed_matches_reference(tiny_pair, samples):
    seed, ref, ours = tiny_pair
    pcm = _clip(seed * 100 + samples % 97, samples)
    expected = _reference_embedding(ref, pcm)
    got = embed(ours, pcm)
    assert got.shape == (TINY.enc_dim,) and got.dtype == np.float32
    assert rel_err(got, expected) < 1e-4


def test_unpadded_call_matches_reference(tiny_pair):
    """`module(mels)` with no lengths (exact shape, plain reflect pads) is the reference forward."""
    seed, ref, ours = tiny_pair
    mels = np.random.default_rng(seed).standard_normal((2, 57, 128)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(mels)).numpy()
    assert rel_err(np.asarray(ours(jnp.asarray(mels))), expected) < 1e-4


def test_padded_batch_equals_each_clip(tiny_pair):
    """Masking: rows of different true lengths in one padded batch give each clip's own x-vector."""
    seed, ref, ours = tiny_pair
    clips = [_clip(seed + i, n) for i, n in enumerate([min_samples(TINY), 7000, 2 * SR + 5])]
    got = embed_batch(ours, clips)
    assert got.shape == (3, TINY.enc_dim)
    for row, clip in zip(got, clips, strict=True):
        assert rel_err(row, _reference_embedding(ref, clip)) < 1e-4


def test_min_length_is_the_reference_limit():
    """`min_samples` is exactly where the reference starts to work (its reflect pads need T > pad)."""
    ref = _reference_module(TINY, 0, std=0.1)
    ours = _ours(ref, TINY)
    n = min_samples(TINY)
    assert min_frames(TINY) == 5 and n == 5 * 256  # res2net k3, dilation 4 pads 4 frames
    embed(ours, _clip(0, n))
    _reference_embedding(ref, _clip(0, n))
    with pytest.raises(RuntimeError):
        _reference_embedding(ref, _clip(0, n - 1))
    with pytest.raises(ValueError, match="at least 1280"):
        embed(ours, _clip(0, n - 1))


@pytest.mark.parametrize("pcm, match", [
    (np.zeros(0, np.float32), "empty"),
    (np.full(4000, np.nan, np.float32), "NaN or infinite"),
    (np.concatenate([np.zeros(3999, np.float32), [np.inf]]).astype(np.float32), "NaN or infinite"),
    (np.zeros(300, np.float32), "at least"),
    (np.zeros((2, 4000), np.float32), "mono"),
    (np.zeros(4000, np.int16), "dtype int16"),
])
def test_bad_input(pcm, match):
    with pytest.raises(ValueError, match=match):
        validate_pcm(pcm, TINY)


def test_loud_input_warns_but_works():
    with pytest.warns(UserWarning, match="exceeds 1.0"):
        out = validate_pcm(np.full(4000, 1.5, np.float64), TINY)
    assert out.dtype == np.float32


def test_bad_config():
    with pytest.raises(ValueError, match="same length"):
        SpeakerEncoder(dataclasses.replace(TINY, enc_dilations=(1, 2, 3)), rngs=None)
    with pytest.raises(ValueError, match="divisible"):
        SpeakerEncoder(dataclasses.replace(TINY, enc_res2net_scale=5), rngs=None)


def test_component_is_float32():
    full = Qwen3TTSConfig(talker=TalkerConfig(), code_predictor=CodePredictorConfig(), speaker_encoder=REAL,
                          speech_tokenizer=None)
    module = components.abstract("speaker_encoder", full, jnp.bfloat16)
    dtypes = {v.dtype for v in flat_params(module).values()}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert "speaker_encoder" in components.present(full)
    assert "speaker_encoder" not in components.present(dataclasses.replace(full, speaker_encoder=None))


def test_real_size_three_seconds():
    """The released channel config (~8.85M parameters, enc_dim 1024) on a 3 s clip."""
    ref = _reference_module(REAL, 0, std=None)  # torch's default init
    assert sum(p.numel() for p in ref.parameters()) == pytest.approx(8.85e6, rel=0.01)
    pcm = _clip(7, 3 * SR)
    assert rel_err(embed(_ours(ref, REAL), pcm), _reference_embedding(ref, pcm)) < 1e-4


@pytest.mark.parametrize("preset", ["tiny", "tiny-proj"])
def test_converted_checkpoint_matches_extract_speaker_embedding(checkpoints, reference_of, preset):
    """End to end: the real converter and `qwen3tts_jax.load` against the reference model's own method."""
    import qwen3tts_jax

    hf, converted = checkpoints.get(preset, 0)
    ref = reference_of(hf).model
    module = qwen3tts_jax.load(converted, ["speaker_encoder"]).speaker_encoder
    for seed, samples in [(0, 2 * SR + 321), (1, 10 * SR)]:
        pcm = _clip(seed, samples)
        with torch.no_grad():
            expected = ref.extract_speaker_embedding(pcm, SR).float().numpy()
        assert expected.shape == (module.cfg.enc_dim,)
        assert rel_err(embed(module, pcm), expected) < 1e-4
