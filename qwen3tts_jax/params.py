"""Moving parameters between NNX modules and flat `{dotted.path: array}` dictionaries.

The converter writes, and the loader reads, one orbax checkpoint per component whose tree
is the nested form of these dotted paths (string keys only, so list indices become "0", "1").
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def flat_params(module: nnx.Module) -> dict[str, Any]:
    """`{dotted path: leaf}` of every variable of `module` (arrays or ShapeDtypeStructs)."""
    state = nnx.state(module)
    return {_dotted(path): var.get_value() if hasattr(var, "get_value") else var.value
            for path, var in nnx.to_flat_state(state)}


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """`{"a.0.b": x}` -> `{"a": {"0": {"b": x}}}`."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of `nest`."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def assign(module: nnx.Module, flat: dict[str, Any]) -> nnx.Module:
    """Return a copy of `module` (concrete or abstract) whose variables take `flat`'s values.

    Every variable must be given exactly, with its shape; extra keys are an error.
    """
    graphdef, state = nnx.split(module)
    flat_state = nnx.to_flat_state(state)
    wanted = {_dotted(path) for path, _ in flat_state}
    missing, extra = sorted(wanted - set(flat)), sorted(set(flat) - wanted)
    if missing or extra:
        raise ValueError(f"parameter mismatch: missing {missing[:10]}, unexpected {extra[:10]}")
    leaves = []
    for path, var in flat_state:
        value = flat[_dotted(path)]
        expected = var.get_value() if hasattr(var, "get_value") else var.value
        if tuple(value.shape) != tuple(expected.shape):
            raise ValueError(f"{_dotted(path)}: shape {tuple(value.shape)} != {tuple(expected.shape)}")
        leaves.append(jax.numpy.asarray(value, dtype=expected.dtype))
    new_state = jax.tree.unflatten(jax.tree.structure(state), leaves)
    return nnx.merge(graphdef, new_state)
