"""Small helpers shared by the tests."""

from __future__ import annotations

import numpy as np


def rel_err(actual, expected) -> float:
    """Relative error in the L2 norm: ||a - e|| / ||e||, computed in float64."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    denom = np.linalg.norm(e)
    assert denom > 0, "reference output is all zeros: the comparison would prove nothing"
    return float(np.linalg.norm(a - e) / denom)


def to_numpy(t) -> np.ndarray:
    """A torch tensor as float32 (or integer) numpy."""
    t = t.detach().cpu()
    return t.float().numpy() if t.is_floating_point() else t.numpy()


def speech_like(seed: int, samples: int, sr: int = 24000) -> np.ndarray:
    """Speech-like test signal: a few harmonics of a random pitch, amplitude-modulated, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / sr
    f0 = rng.uniform(90, 250)
    x = sum(rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) for k in range(1, 6))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(samples)
    return x.astype(np.float32)
