"""Plan and run a conversion: official Qwen3-TTS folder -> orbax Flax parameters.

The plan is built from safetensors headers and the modules' abstract shapes alone, and
collects *every* problem (unmapped or ambiguous source keys, unknown or duplicate targets,
shape mismatches, unfilled targets) before raising one `ConversionError`. Only then are
tensors read, one at a time, component by component, so peak memory stays near one copy
of the largest component's output. Output is written to a temporary sibling folder and
renamed into place at the very end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from qwen3tts_jax.convert.rule import Transform
from qwen3tts_jax.convert.safetensors_reader import SafetensorsError, SafetensorsFile
from qwen3tts_jax.convert.table import IGNORED, RULES

from qwen3tts_jax import components
from qwen3tts_jax.checkpoint import FORMAT_VERSION, MANIFEST
from qwen3tts_jax.config import Qwen3TTSConfig
from qwen3tts_jax.params import flat_params, nest
from qwen3tts_jax.prompt import check_ids_of

SPEECH_TOKENIZER = "speech_tokenizer"
_COMPILED = tuple((re.compile(r.source), r) for r in RULES)
_IGNORED = tuple(re.compile(i.source) for i in IGNORED)

log = logging.getLogger(__name__)


class ConversionError(ValueError):
    """Every problem found while planning, reported at once."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"conversion failed with {len(problems)} problem(s):\n  {lines}{more}")


@dataclasses.dataclass(frozen=True)
class Assignment:
    component: str
    path: str  # dotted path inside the component
    transform: Transform


def _match(key: str) -> list[tuple[str, Transform]]:
    return [(m.expand(rule.target), rule.transform)
            for pattern, rule in _COMPILED if (m := pattern.fullmatch(key))]


def plan(source_shapes: dict[str, tuple[int, ...]],
         targets: dict[str, dict[str, Any]],
         where: dict[str, str] | None = None, unused: set[str] = frozenset()) -> dict[str, Assignment]:
    """Map every source key to a target, checking shapes; raise ConversionError listing all problems.

    `source_shapes`: namespaced key -> shape; `targets`: component -> {path: ShapeDtypeStruct};
    `where`: namespaced key -> file name, for error messages; `unused`: components whose keys
    are skipped (`components.unused`: in the files, never run by this model type).
    """
    where = where or {}
    problems: list[str] = []
    plan_: dict[str, Assignment] = {}
    filled: dict[tuple[str, str], str] = {}
    claimed: set[tuple[str, str]] = set()
    for key, shape in source_shapes.items():
        origin = f"{where[key]}: " if key in where else ""
        matches = _match(key)
        if not matches:
            if not any(p.fullmatch(key) for p in _IGNORED):
                problems.append(f"{origin}unmapped source key {key!r} {shape}")
            continue
        if len(matches) > 1:
            problems.append(f"{origin}key {key!r} matches {len(matches)} rules: {[t for t, _ in matches]}")
            continue
        target, transform = matches[0]
        component, _, path = target.partition(".")
        if component in unused and component not in targets:
            continue
        if component not in targets:
            problems.append(f"{origin}key {key!r} maps to component {component!r}, "
                            "which this checkpoint's config does not have")
            continue
        expected = targets[component].get(path)
        if expected is None:
            problems.append(f"{origin}key {key!r} maps to {target!r}, which is not a model parameter")
            continue
        if transform.rank is not None and len(shape) != transform.rank:
            claimed.add((component, path))
            problems.append(f"{origin}key {key!r}: shape {shape} is not rank {transform.rank} "
                            f"({transform.name})")
            continue
        claimed.add((component, path))  # a bad shape is reported once, not again as "unfilled"
        got = transform.shape(shape)
        if tuple(got) != tuple(expected.shape):
            problems.append(f"{origin}key {key!r}: shape {shape} -> {got} ({transform.name}) but "
                            f"{target} needs {tuple(expected.shape)}")
            continue
        if (component, path) in filled:
            problems.append(f"{origin}keys {filled[component, path]!r} and {key!r} both map to {target!r}")
            continue
        filled[component, path] = key
        plan_[key] = Assignment(component, path, transform)
    for component, paths in targets.items():
        for path in paths:
            if (component, path) not in filled and (component, path) not in claimed:
                problems.append(f"target {component}.{path} {tuple(paths[path].shape)} "
                                "is not filled by any source key")
    if problems:
        raise ConversionError(problems)
    return plan_


def abstract_targets(cfg: Qwen3TTSConfig, dtype, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """component -> {dotted path: ShapeDtypeStruct}, allocating nothing."""
    names = components.present(cfg) if names is None else names
    return {name: flat_params(components.abstract(name, cfg, dtype)) for name in names}


def map_state_dict(arrays: dict[str, np.ndarray], cfg: Qwen3TTSConfig, dtype=np.float32,
                   names: list[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Convert in-memory namespaced tensors (tests: a reference module's state_dict as numpy).

    `names` restricts the check to those components (the keys must all belong to them).
    Returns component -> {dotted path: array in the component's dtype}.
    """
    targets = abstract_targets(cfg, dtype, names)
    assignments = plan({k: tuple(v.shape) for k, v in arrays.items()}, targets)
    out: dict[str, dict[str, np.ndarray]] = {name: {} for name in targets}
    for key, a in assignments.items():
        want = targets[a.component][a.path].dtype
        out[a.component][a.path] = np.asarray(a.transform.apply(np.asarray(arrays[key]))).astype(want)
    return out


# ----------------------------------------------------------------------------------------
# Sources


def resolve_source(src: str | Path) -> Path:
    """A local folder as it is; otherwise a hub id fetched with `snapshot_download`."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError([f"{src}: not a folder (give the checkpoint folder, not a file)"])
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(src)) and not str(src).startswith((".", "/")):
        from huggingface_hub import snapshot_download
        try:
            return Path(snapshot_download(str(src)))
        except Exception as e:  # network, auth, missing repo: all end the same way for a user
            raise ConversionError([f"could not download hub id {src!r}: {e}"]) from e
    raise ConversionError([f"{src}: no such folder (and not a hub id like 'Qwen/Qwen3-TTS-12Hz-0.6B-Base')"])


def open_sources(folder: Path, cfg: Qwen3TTSConfig) -> tuple[dict[str, tuple[SafetensorsFile, str]], list[str]]:
    """Namespaced key -> (file, key in file), for the main weights and the speech tokenizer."""
    problems: list[str] = []
    files: list[tuple[Path, str]] = []
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files += [(folder / s, "") for s in shards]
    else:
        files.append((folder / "model.safetensors", ""))
    if cfg.speech_tokenizer is not None:
        files.append((folder / SPEECH_TOKENIZER / "model.safetensors", SPEECH_TOKENIZER + "."))
    else:
        problems.append(f"{folder / SPEECH_TOKENIZER / 'config.json'}: missing (the speech tokenizer is required)")
    sources: dict[str, tuple[SafetensorsFile, str]] = {}
    for path, prefix in files:
        try:
            f = SafetensorsFile(path)
        except SafetensorsError as e:
            problems.append(str(e))
            continue
        for key in f.shapes:
            sources[prefix + key] = (f, key)
    return sources, problems


# ----------------------------------------------------------------------------------------
# The conversion


def convert_checkpoint(src: str | Path, dst: str | Path, dtype: str = "bfloat16",
                       overwrite: bool = False, progress: bool = False) -> Path:
    """Convert `src` (folder or hub id) into `dst`; returns `dst`. Atomic: all or nothing."""
    import orbax.checkpoint as ocp
    from tqdm import tqdm

    if dtype not in ("float32", "bfloat16"):
        raise ConversionError([f"unsupported dtype {dtype!r} (float32 or bfloat16)"])
    dst = Path(dst).expanduser().absolute()
    if dst.exists() and not overwrite:
        raise ConversionError([f"{dst}: already exists (pass overwrite=True / --overwrite to replace it)"])
    if dst.exists() and not dst.is_dir():
        raise ConversionError([f"{dst}: exists and is not a folder (not replaced)"])
    folder = resolve_source(src)
    if folder.resolve() == dst.resolve() or dst.resolve() in folder.resolve().parents:
        raise ConversionError([f"{dst}: replacing it would delete the source checkpoint {folder}"])
    try:
        check_ids_of(folder)  # what loading checks: a folder loading would refuse is not written
        cfg = Qwen3TTSConfig.from_dir(folder)
    except (FileNotFoundError, ValueError, TypeError) as e:
        raise ConversionError([str(e)]) from e
    sources, problems = open_sources(folder, cfg)
    if problems:
        raise ConversionError(problems)
    targets = abstract_targets(cfg, dtype)
    where = {k: str(f.path) for k, (f, _) in sources.items()}
    skipped = components.unused(cfg)
    assignments = plan({k: f.shapes[key] for k, (f, key) in sources.items()}, targets, where, skipped)
    if skipped:
        left = len(sources) - len(assignments)
        log.info("%s model: %d source tensors not converted (the table's ignored keys, and %s, which this "
                 "model type never runs)", cfg.tts_model_type, left, sorted(skipped))

    dst.parent.mkdir(parents=True, exist_ok=True)
    # pid + uuid: unique across containers sharing a cache (the server is PID 1 in each)
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        bar = tqdm(total=len(assignments), unit="tensor", desc="converting", disable=not progress)
        checkpointer = ocp.StandardCheckpointer()
        for name, paths in targets.items():
            values: dict[str, np.ndarray] = {}
            for key, a in assignments.items():
                if a.component != name:
                    continue
                f, file_key = sources[key]
                values[a.path] = a.transform.apply(f.get(file_key)).astype(paths[a.path].dtype, copy=False)
                bar.update()
            checkpointer.save(tmp / "params" / name, nest(values))
            checkpointer.wait_until_finished()
            del values
        bar.close()
        _copy_side_files(folder, tmp)
        (tmp / MANIFEST).write_text(json.dumps({
            "format_version": FORMAT_VERSION, "dtype": dtype, "components": list(targets),
            "source": str(src)}, indent=2) + "\n")
        _replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for f, _ in sources.values():
            f.close()
    return dst


def _copy_side_files(folder: Path, out: Path) -> None:
    """Configs and tokenizer files, top level and `speech_tokenizer/`, but no weights."""
    for sub in ("", SPEECH_TOKENIZER):
        src_dir = folder / sub
        if not src_dir.is_dir():
            continue
        (out / sub).mkdir(exist_ok=True)
        for p in src_dir.iterdir():
            if p.is_file() and p.suffix in (".json", ".txt", ".model") and not p.name.endswith(".index.json"):
                shutil.copyfile(p, out / sub / p.name)


def _replace(tmp: Path, dst: Path) -> None:
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dst)
