"""The speaker encoder's log-mel front end against the reference `mel_spectrogram` (REFERENCE-FACTS 2.4, 6.17)."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from qwen3tts_jax.mel import MelConfig, log_mel, mel_filterbank
from tests.helpers import rel_err, speech_like

SR = 24000
CFG = MelConfig()


def _reference(pcm: np.ndarray) -> np.ndarray:
    """MOD `extract_speaker_embedding`'s call of `mel_spectrogram`, as `[B, T, 128]`."""
    from qwen_tts.core.models.modeling_qwen3_tts import mel_spectrogram

    mel = mel_spectrogram(torch.from_numpy(pcm), n_fft=1024, num_mels=128, sampling_rate=SR, hop_size=256,
                          win_size=1024, fmin=0, fmax=12000)
    return mel.transpose(1, 2).numpy()


def _clip(seed: int, samples: int) -> np.ndarray:
    return speech_like(seed, samples, SR)


@pytest.mark.parametrize("kwargs", [
    dict(sr=24000, n_fft=1024, n_mels=128, fmin=0, fmax=12000),  # the speaker encoder's
    dict(sr=16000, n_fft=512, n_mels=80, fmin=20, fmax=None),
    dict(sr=22050, n_fft=2048, n_mels=100, fmin=0, fmax=8000),
])
def test_filterbank_equals_librosa(kwargs):
    ours = mel_filterbank(kwargs["sr"], kwargs["n_fft"], kwargs["n_mels"], kwargs["fmin"], kwargs["fmax"])
    ref = librosa.filters.mel(**kwargs)
    assert ours.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("samples", [385, 1000, 3 * SR + 17, 10 * SR])
def test_log_mel_matches_reference(seed, samples):
    pcm = _clip(seed, samples)[None]
    ref = _reference(pcm)
    ours = np.asarray(log_mel(pcm))
    assert ours.shape == ref.shape == (1, samples // 256, 128)
    assert CFG.num_frames(samples) == samples // 256
    assert rel_err(ours, ref) < 1e-5


def test_white_noise_and_silence():
    rng = np.random.default_rng(3)
    noise = rng.uniform(-1, 1, (2, 2 * SR)).astype(np.float32)
    assert rel_err(np.asarray(log_mel(noise)), _reference(noise)) < 1e-5
    silence = np.zeros((1, SR), np.float32)  # every bin hits the 1e-5 clamp
    np.testing.assert_allclose(np.asarray(log_mel(silence)), _reference(silence), rtol=1e-6)


def test_padded_batch_with_lengths_is_exact():
    """Frames below `length // hop` of a zero-padded row equal those of the unpadded clip (to float ulps)."""
    lengths = [385, 5000, 3 * SR + 100]
    clips = [_clip(10 + i, n) for i, n in enumerate(lengths)]
    frames = max(lengths) // 256 + 7
    buf = np.zeros((len(clips), (frames + 1) * 256), np.float32)
    for i, c in enumerate(clips):
        buf[i, :c.size] = c
    out = np.asarray(log_mel(buf, np.array(lengths), num_frames=frames))
    assert out.shape == (3, frames, 128) and np.isfinite(out).all()
    for i, c in enumerate(clips):
        alone = np.asarray(log_mel(c[None]))[0]
        np.testing.assert_allclose(out[i, :c.size // 256], alone, rtol=1e-6, atol=1e-6)  # batch-size ulps
        assert rel_err(out[i, :c.size // 256], _reference(c[None])[0]) < 1e-5
