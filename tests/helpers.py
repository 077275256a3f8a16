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
