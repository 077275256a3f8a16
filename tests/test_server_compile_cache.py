"""`python -m qwen3tts_jax.server --compile-cache`: JAX's persistent compilation cache, so restarts skip compiles."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# In a child process: jax's cache settings are process-global and initialised once.
PROBE = textwrap.dedent("""
    import sys, jax, jax.numpy as jnp
    from qwen3tts_jax.server.__main__ import enable_compile_cache
    where = enable_compile_cache(sys.argv[1] or None)
    print(where)
    if where is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.jit(lambda x: jnp.sin(x) @ x.T + 1)(jnp.ones((8, 8))).block_until_ready()
""")


def _probe(arg: str, env_dir: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"} | {"JAX_PLATFORMS": "cpu"}
    if env_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(env_dir / "from-env")
    out = subprocess.run([sys.executable, "-c", PROBE, arg], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_compile_cache_dir_fills_with_compiled_executables(tmp_path):
    where = tmp_path / "xla"
    assert _probe(str(where)) == str(where)
    assert any(where.iterdir()), "nothing was written to the compilation cache"


def test_compile_cache_defaults_to_the_environment_and_can_be_turned_off(tmp_path):
    assert _probe("", tmp_path) == str(tmp_path / "from-env")
    assert any((tmp_path / "from-env").iterdir())
    assert _probe("off", tmp_path / "other") == "None"
    assert not (tmp_path / "other").exists()
