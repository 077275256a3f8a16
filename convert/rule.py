"""The vocabulary of the conversion table: rules, ignores and layout transforms.

A rule maps source keys (a regex, full match) to a dotted target path in the Flax
parameter tree (backreferences allowed) and names the layout transform. Each transform
knows its effect on shapes, so the whole plan is checked from safetensors headers alone
before a single tensor is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Transform:
    name: str
    apply: Callable[[np.ndarray], np.ndarray]
    shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    rank: int | None  # required source rank, None = any


def _permute(*axes: int):
    return (lambda a: np.ascontiguousarray(a.transpose(axes)),
            lambda s: tuple(s[i] for i in axes))


IDENTITY = Transform("identity", lambda a: a, lambda s: tuple(s), None)
# torch Conv1d weight (out, in/groups, k) -> flax kernel (k, in/groups, out)
CONV1D = Transform("conv1d", *_permute(2, 1, 0), rank=3)
# torch ConvTranspose1d weight (in, out/groups, k) -> (k, in, out/groups)
CONV_TRANSPOSE1D = Transform("conv_transpose1d", *_permute(2, 0, 1), rank=3)


@dataclasses.dataclass(frozen=True)
class Rule:
    source: str  # regex, full match against the namespaced source key
    target: str  # dotted target path; "\\1" etc. take the source groups
    transform: Transform = IDENTITY


@dataclasses.dataclass(frozen=True)
class Ignore:
    source: str  # regex, full match
    reason: str  # why the reference stores it but the JAX model never needs it
