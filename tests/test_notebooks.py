"""The research notebooks: committed without outputs, and executed top to bottom here.

Each notebook runs in a fresh kernel started from *this* interpreter (a temporary kernelspec,
so nothing has to be installed with `jupyter kernelspec` on a clean machine), in a temporary
working directory, so nothing is written into the repository. Any cell error fails the test;
every cell tagged `plot` must leave an image/png output. A plotting cell that needs benchmark
results (cell metadata `qwen3tts.requires_results`, a glob under benchmarks/results/) must
plot them when such files exist, and print a clear message instead when none do.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
RESULTS = REPO / "benchmarks" / "results"
KERNEL = "qwen3tts-jax-tests"
MISSING = "No benchmark results"   # what notebook 04 prints for a plot whose data is absent


def test_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["01_convert_and_inspect.ipynb", "02_parity_vs_reference.ipynb",
                                           "03_voice_clone_and_stream.ipynb", "04_benchmarks.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert "widgets" not in nb.metadata


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A kernelspec for the running interpreter, found through JUPYTER_PATH; IPython and
    Jupyter runtime state, and the notebooks' temporary folders, kept under tmp_path."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "qwen3tts-jax tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))   # the notebooks' scratch folders
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("QWEN3TTS_REPO", str(REPO))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    return tmp_path


def execute(path: Path, workdir: Path):
    nb = nbformat.read(path, as_version=4)
    workdir.mkdir(exist_ok=True)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=600, startup_timeout=120,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def text_of(cell) -> str:
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(out.data.get("text/plain", "") + out.data.get("text/markdown", ""))
    return "".join(parts)


def check_plots(nb, name: str, results: Path) -> int:
    """Every `plot` cell has an image, unless it needs results that do not exist (then it says so)."""
    present = [p.name for p in results.glob("*.json")] if results.is_dir() else []
    images = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "plot" not in cell.metadata.get("tags", []):
            continue
        has_image = any("image/png" in out.get("data", {}) for out in cell.outputs)
        needs = cell.metadata.get("qwen3tts", {}).get("requires_results")
        if needs and not fnmatch.filter(present, needs):
            assert MISSING in text_of(cell), f"{name} cell {i}: no {needs} results and no message"
            continue
        assert has_image, f"{name} cell {i} is a plotting cell but produced no image/png output"
        assert MISSING not in text_of(cell), f"{name} cell {i}: results exist but it says they are missing"
        images += 1
    return images


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_and_plots(path, kernel_env):
    before = sorted(p.name for p in path.parent.iterdir())
    nb = execute(path, kernel_env / "work")
    images = check_plots(nb, path.name, RESULTS)
    # 04 plots only the result kinds that exist; check_plots already held each cell to that.
    assert images > 0 or path.stem.startswith("04")
    assert sorted(p.name for p in path.parent.iterdir()) == before, "a notebook wrote into notebooks/"


def test_benchmarks_notebook_without_results(kernel_env, monkeypatch):
    """With an empty results folder the benchmarks notebook still runs and says what is missing."""
    empty = kernel_env / "no-results"
    empty.mkdir()
    monkeypatch.setenv("QWEN3TTS_BENCH_RESULTS", str(empty))
    nb = execute(REPO / "notebooks" / "04_benchmarks.ipynb", kernel_env / "work")
    assert check_plots(nb, "04_benchmarks.ipynb", empty) == 0
