"""Shared fixtures: random-weight reference checkpoints, converted by the real converter.

Building a tiny checkpoint takes a few seconds, so each (preset, seed) is built once per
test session, in pytest's temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

# Parity is checked in float32: make matmuls exact on every backend.
jax.config.update("jax_default_matmul_precision", "highest")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_executables():
    """Drop every compiled executable after each test module. On XLA's CPU backend each one
    holds hundreds of memory mappings (a 16-slot engine's warm-up: ~18,000), and a process
    that passes `vm.max_map_count` (65530 by default) segfaults in its next compile; the whole
    suite in one process compiles more than that."""
    yield
    import gc

    jax.clear_caches()
    gc.collect()


class Checkpoints:
    """`get(preset, seed)` -> (hf_dir, converted_dir), built on first use."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[tuple[str, int], tuple[Path, Path]] = {}

    def get(self, preset: str = "tiny", seed: int = 0, saved_as: str = "float32") -> tuple[Path, Path]:
        """`saved_as="bfloat16"` writes the main weights in bfloat16, as the released checkpoints
        are; the converted folder is float32 either way."""
        key = (preset, seed, saved_as)
        if key not in self._built:
            from qwen3tts_jax.convert import convert_checkpoint

            from tests.reference.checkpoints import build_checkpoint

            name = f"{preset}-{seed}" + ("" if saved_as == "float32" else f"-{saved_as}")
            hf = build_checkpoint(self.root / f"{name}-hf", preset, seed, dtype=saved_as)
            out = convert_checkpoint(hf, self.root / f"{name}-jax", dtype="float32")
            self._built[key] = (hf, out)
        return self._built[key]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
    return Checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def tiny_checkpoint(checkpoints) -> tuple[Path, Path]:
    """The default tiny checkpoint: (reference HF folder, converted folder)."""
    return checkpoints.get("tiny", 0)


_references: dict[Path, object] = {}


@pytest.fixture(scope="session")
def reference_of():
    """`reference_of(hf_dir)` -> the reference wrapper `Qwen3TTSModel` loaded from that folder."""
    from tests.reference.checkpoints import load_reference

    def get(path: Path):
        if path not in _references:
            _references[path] = load_reference(path)
        return _references[path]
    return get
