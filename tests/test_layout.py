"""The package's shape: one installed name, and imports that never run back in a circle."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Installed name -> folder of the repository (pyproject.toml's package-dir).
PACKAGES = {"qwen3tts_jax.convert": REPO / "convert", "qwen3tts_jax.server": REPO / "server",
            "qwen3tts_jax": REPO / "qwen3tts_jax"}
SCRIPTS = ("qwen3tts-convert", "qwen3tts-server", "qwen3tts-synthesize", "qwen3tts-client")


def _modules() -> dict[str, Path]:
    out = {}
    for name, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mod = ".".join([name, *parts])
            if name == "qwen3tts_jax" and parts and f"qwen3tts_jax.{parts[0]}" in PACKAGES:
                continue
            out[mod] = path
    return out


def _imports(mod: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ours that `mod` imports anywhere (top level, functions, TYPE_CHECKING)."""
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in modules and name != mod:
                found.add(name)
    return found


def test_no_import_circles():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert "qwen3tts_jax.server.session" in graph and "qwen3tts_jax.generation" in graph
    cycles = []
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if n.rpartition(".")[0] == m or m.startswith(n + "."):  # a package and its own modules
                continue
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_path_reads_top_down():
    """prompt -> generation -> engine -> api: no layer imports one above it."""
    graph = {m: _imports(m, p, _modules()) for m, p in _modules().items()}
    order = ["qwen3tts_jax.prompt", "qwen3tts_jax.generation", "qwen3tts_jax.engine", "qwen3tts_jax.api"]
    for i, low in enumerate(order):
        assert not graph[low] & set(order[i + 1:]), low
    assert "qwen3tts_jax.server.app" not in graph["qwen3tts_jax.server.session"]


def test_the_wheel_installs_one_name_and_its_console_scripts_run(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the repository
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "qwen3tts_jax", "convert", "server"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", str(src), "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"qwen3tts_jax"}
    assert "qwen3tts_jax/convert/assets/hf-configs/Qwen3-TTS-12Hz-0.6B-Base/vocab.json" in names
    assert "qwen3tts_jax/server/voices/default/reference.wav" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    # Away from the repository, with the installed copy first on the path: only the wheel counts.
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import qwen3tts_jax.server.app, qwen3tts_jax.convert as c; "
                            "print(c.__file__)"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(site))
    for script in SCRIPTS:
        run = subprocess.run([str(site / "bin" / script), "--help"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0 and "usage:" in run.stdout, (script, run.stderr[-2000:])
    for module in ("qwen3tts_jax.convert", "qwen3tts_jax.server", "qwen3tts_jax.server.client"):
        run = subprocess.run([sys.executable, "-m", module, "--help"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0 and "usage:" in run.stdout, (module, run.stderr[-2000:])


def test_the_library_never_imports_the_reference():
    """torch, transformers and qwen-tts are the tests' reference only: loading the library, the
    converter and the server imports none of them."""
    code = ("import sys, qwen3tts_jax, qwen3tts_jax.convert.converter, qwen3tts_jax.server.app, "
            "qwen3tts_jax.server.__main__; "
            "print(sorted(m for m in ('torch', 'transformers', 'qwen_tts') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
