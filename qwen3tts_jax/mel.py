"""The speaker encoder's log-mel front end, exactly as the reference `mel_spectrogram`.

Reference recipe (MOD `mel_spectrogram` as called by `extract_speaker_embedding`):
reflect-pad the signal by `(n_fft - hop) // 2` on each side, STFT with `center=False`,
a periodic Hann window and onesided output, magnitude `sqrt(re² + im² + 1e-9)`, a
Slaney-scale Slaney-normalised mel filterbank (librosa's), then `log(clamp(mel, 1e-5))`.
There is no dithering, pre-emphasis or normalisation. Frame count is `floor(S / hop)`.

The filterbank is computed here in numpy, op for op as `librosa.filters.mel` does
(float64 maths written into a float32 array), so librosa is needed only by the tests.

Lengths: `log_mel` takes a padded batch plus the true sample count per row. The signal's
reflection at its *true* end is rebuilt with a gather, so every frame below
`lengths // hop` is exactly what the reference computes on the unpadded signal; frames
past that are finite garbage that callers must mask. This lets callers pad clips to a few
bucket sizes without changing the result (see `speaker_encoder.embed`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

# The reference clamps the mel energies at 1e-5 before the log and adds 1e-9 under the sqrt.
LOG_CLAMP = 1e-5
MAG_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """The constants `extract_speaker_embedding` passes to `mel_spectrogram`."""

    sample_rate: int = 24000
    n_fft: int = 1024
    win_size: int = 1024
    hop_size: int = 256
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = 12000.0

    @property
    def pad(self) -> int:
        """Reflect padding on each side of the signal."""
        return (self.n_fft - self.hop_size) // 2

    def num_frames(self, num_samples: int) -> int:
        """Frames the reference produces for `num_samples` samples (`floor(S / hop)`)."""
        return max((num_samples + 2 * self.pad - self.n_fft) // self.hop_size + 1, 0)

    @property
    def min_samples(self) -> int:
        """Fewest samples giving one frame, with a reflect pad shorter than the signal."""
        need_frame = self.n_fft - 2 * self.pad
        return max(need_frame, self.pad + 1)


# --------------------------------------------------------------------------- filterbank


# Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (librosa `htk=False`).
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    freq = np.asanyarray(freq, dtype=np.float64)
    log_part = _MIN_LOG_MEL + np.log(np.maximum(freq, 1e-300) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(freq >= _MIN_LOG_HZ, log_part, freq / _F_SP)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asanyarray(mels, dtype=np.float64)
    return np.where(mels >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels - _MIN_LOG_MEL)), _F_SP * mels)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """`librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)` (Slaney scale and norm), float32.

    Shape `[n_mels, 1 + n_fft // 2]`.
    """
    if fmax is None:
        fmax = sample_rate / 2.0
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]  # float64 maths, stored as float32, as librosa does
    return weights


@functools.lru_cache(maxsize=8)
def _basis(cfg: MelConfig) -> np.ndarray:
    basis = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
    basis.setflags(write=False)
    return basis


def _hann_periodic(n: int) -> np.ndarray:
    """`torch.hann_window(n)` (periodic), computed in float64 then rounded to float32."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


# --------------------------------------------------------------------------- spectrogram


def reflect_index(i: jax.Array, length: jax.Array) -> jax.Array:
    """Index into a signal of `length` samples that a reflect pad reads for position `i`.

    `i < 0` reads `-i`, `i >= length` reads `2 (length - 1) - i` (no edge repeat, as torch's
    and numpy's "reflect"); exact while `-length < i < 2 length - 1`.
    """
    return jnp.where(i < 0, -i, jnp.where(i >= length, 2 * (length - 1) - i, i))


@functools.partial(jax.jit, static_argnames=("num_frames", "cfg"))
def log_mel(pcm: jax.Array, lengths: jax.Array | None = None, *, num_frames: int | None = None,
            cfg: MelConfig = MelConfig()) -> jax.Array:
    """Log-mel spectrogram `[B, num_frames, n_mels]` (channels last) of `pcm [B, S]`.

    `lengths [B]` are the true sample counts (default: all `S`). Frame `f` of row `b` is exact
    for `f < lengths[b] // hop`; later frames are finite but meaningless. `num_frames`
    defaults to `S // hop`. Requires `lengths > pad` (as the reference's reflect pad does).
    """
    pcm = pcm.astype(jnp.float32)
    batch, samples = pcm.shape
    if num_frames is None:
        num_frames = cfg.num_frames(samples)
    if lengths is None:
        lengths = jnp.full((batch,), samples, jnp.int32)
    lengths = jnp.asarray(lengths, jnp.int32)

    # Sample position (in the unpadded signal) of every frame tap: [F, n_fft].
    taps = (jnp.arange(num_frames, dtype=jnp.int32)[:, None] * cfg.hop_size
            + jnp.arange(cfg.n_fft, dtype=jnp.int32)[None, :] - cfg.pad)
    idx = reflect_index(taps[None], lengths[:, None, None])  # [B, F, n_fft]
    idx = jnp.clip(idx, 0, samples - 1)
    frames = jnp.take_along_axis(pcm[:, None, :], idx, axis=2, mode="clip")  # [B, F, n_fft]

    window = np.zeros(cfg.n_fft, np.float32)
    offset = (cfg.n_fft - cfg.win_size) // 2  # torch.stft centres a shorter window
    window[offset:offset + cfg.win_size] = _hann_periodic(cfg.win_size)
    spec = jnp.fft.rfft(frames * window, n=cfg.n_fft, axis=-1)  # [B, F, n_fft/2+1]
    mag = jnp.sqrt(jnp.real(spec) ** 2 + jnp.imag(spec) ** 2 + MAG_EPS)
    mel = jnp.einsum("bfk,mk->bfm", mag, jnp.asarray(_basis(cfg)),
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, LOG_CLAMP))
