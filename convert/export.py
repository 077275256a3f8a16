"""The conversion table run backwards: Flax parameters -> official safetensors keys and layouts.

Used to write random-weight checkpoints in the real layout without torch (the server's
embedded demo) and to check the table by round trip. Each target path is matched against
the rule templates; the source key is rebuilt from the rule's regex, and the result is
verified by running the forward table on it.
"""

from __future__ import annotations

import functools
import re

import numpy as np
from qwen3tts_jax.convert.converter import _match
from qwen3tts_jax.convert.rule import Rule
from qwen3tts_jax.convert.table import RULES

from qwen3tts_jax.conv import blocks_kernel_to_torch

INVERSE = {"identity": lambda a: a, "conv1d": lambda a: a.transpose(2, 1, 0),
           "conv_transpose1d": lambda a: a.transpose(1, 2, 0),
           # codec decoder transposed convs, stored in block layout (M, I, stride, O)
           "conv_transpose1d_blocks1": blocks_kernel_to_torch,
           "conv_transpose1d_blocks2": blocks_kernel_to_torch}


def _top_level(pattern: str) -> list[tuple[str, str]]:
    """Split a source regex into ("lit", char) and ("group", sub-pattern) tokens."""
    tokens, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            tokens.append(("lit", pattern[i + 1]))
            i += 2
        elif c == "(":
            depth, j, in_class = 0, i, False
            while True:
                ch = pattern[j]
                if ch == "\\":
                    j += 2
                    continue
                if ch == "[":
                    in_class = True
                elif ch == "]":
                    in_class = False
                elif not in_class and ch == "(":
                    depth += 1
                elif not in_class and ch == ")":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            body = pattern[i + 1:j]
            if body.startswith("?"):
                raise ValueError(f"top-level non-capturing group in {pattern!r}")
            tokens.append(("group", body))
            i = j + 1
        elif c in ".*+?[]{}|^$":
            raise ValueError(f"unsupported top-level regex syntax {c!r} in {pattern!r}")
        else:
            tokens.append(("lit", c))
            i += 1
    return tokens


@functools.cache
def _inverse(rule: Rule) -> tuple[re.Pattern, list[tuple[str, str]]]:
    tokens = _top_level(rule.source)
    groups = [body for kind, body in tokens if kind == "group"]
    parts = re.split(r"\\(\d)", rule.target)
    regex = ""
    for k, part in enumerate(parts):
        regex += re.escape(part) if k % 2 == 0 else f"(?P<g{part}>{groups[int(part) - 1]})"
    return re.compile(regex), tokens


def source_key(target: str) -> tuple[str, Rule]:
    """The namespaced source key (and its rule) that the table maps to `target`."""
    for rule in RULES:
        pattern, tokens = _inverse(rule)
        m = pattern.fullmatch(target)
        if not m:
            continue
        values, key, g = m.groupdict(), "", 0
        for kind, text in tokens:
            if kind == "lit":
                key += text
            else:
                g += 1
                key += values[f"g{g}"]
        if _match(key) == [(target, rule.transform)]:
            return key, rule
    raise KeyError(f"no table rule produces {target!r}")


def to_source_tensors(params: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """component -> {path: array} (Flax layouts) => namespaced source key -> array (torch layouts)."""
    out = {}
    for component, flat in params.items():
        for path, value in flat.items():
            key, rule = source_key(f"{component}.{path}")
            out[key] = np.ascontiguousarray(INVERSE[rule.transform.name](np.asarray(value)))
    return out
