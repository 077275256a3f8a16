"""Load a converted checkpoint folder: the config and the Flax modules with their weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from qwen3tts_jax import components
from qwen3tts_jax.config import Qwen3TTSConfig
from qwen3tts_jax.params import assign, flat_params, flatten, nest

MANIFEST = "qwen3tts_jax.json"
# Bumped whenever a converted parameter's layout changes; older folders must be re-converted.
FORMAT_VERSION = 3


@dataclasses.dataclass
class LoadedModel:
    config: Qwen3TTSConfig
    dtype: jnp.dtype
    path: Path
    modules: dict[str, nnx.Module]

    def __getattr__(self, name: str):
        # talker, code_predictor, speaker_encoder, codec_decoder, codec_encoder
        if name in components.COMPONENTS:
            return self.modules.get(name)
        raise AttributeError(name)


def is_converted(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def format_version(path: str | Path) -> int | None:
    """The layout version a converted folder was written with (None if not converted)."""
    try:
        return int(json.loads((Path(path) / MANIFEST).read_text()).get("format_version", 0))
    except (FileNotFoundError, ValueError):
        return None


def load(path: str | Path, names: list[str] | None = None) -> LoadedModel:
    """Load the converted folder at `path` (written by `python -m qwen3tts_jax.convert`).

    `names` limits which components are loaded (default: all that were converted).
    """
    import orbax.checkpoint as ocp

    path = Path(path).expanduser().absolute()
    if not is_converted(path):
        raise FileNotFoundError(
            f"{path} is not a converted qwen3tts_jax checkpoint (no {MANIFEST}); "
            "convert it with `python -m qwen3tts_jax.convert SRC DST` or use Qwen3TTS.from_pretrained")
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} was converted by an older qwen3tts_jax (parameter layout {manifest.get('format_version')}, "
            f"this version reads {FORMAT_VERSION}): convert the original checkpoint again")
    dtype = jnp.dtype(manifest["dtype"])
    cfg = Qwen3TTSConfig.from_dir(path)
    wanted = manifest["components"] if names is None else names
    checkpointer = ocp.StandardCheckpointer()
    modules = {}
    for name in wanted:
        if name not in manifest["components"]:
            raise ValueError(f"{path}: component {name!r} was not converted")
        module = components.abstract(name, cfg, dtype)
        target = nest({k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat_params(module).items()})
        restored = checkpointer.restore(path / "params" / name, target)
        modules[name] = assign(module, flatten(restored))
    return LoadedModel(cfg, dtype, path, modules)
