"""CPU kernels XLA lacks, as XLA FFI custom calls compiled on first use.

`bf16_matmul`: float32 activations times bfloat16 weights with float32 arithmetic (see
bf16_matmul.cc for why). The source ships with the package and is compiled once per machine
with the system C++ compiler (`$CXX`, else `c++`) against the FFI headers jaxlib ships, into
`paths.kernels_dir()` (`~/.cache/qwen3tts_jax/kernels`), keyed by the source, jaxlib's version
and the CPU. Without a compiler, or with `QWEN3TTS_JAX_CPU_KERNELS=0` (read on every call of
`available()`), it is False and callers keep the plain XLA path: slower, never wrong.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from qwen3tts_jax import paths

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("bf16_matmul.cc")
TARGET = "qwen3tts_bf16_matmul"


def _cpu_identity() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next((line for line in text.splitlines() if line.startswith("flags")), text[:4096])
    except OSError:
        return platform.processor() or platform.machine()


def _compile(out: Path) -> None:
    import jaxlib

    include = Path(jaxlib.__file__).parent / "include"
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set $CXX)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        built = Path(tmp) / out.name
        base = [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp-simd", f"-I{include}",
                str(SOURCE), "-o", str(built)]
        # -march=native: the library is built on, and for, the machine that runs it.
        for flags in (["-march=native"], []):
            result = subprocess.run(base[:1] + flags + base[1:], capture_output=True, text=True)
            if result.returncode == 0:
                break
        else:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{result.stderr[-2000:]}")
        os.replace(built, out)  # atomic: concurrent first uses each build, one wins


SWITCH = "QWEN3TTS_JAX_CPU_KERNELS"  # "0" turns the kernels off


def available() -> bool:
    """Whether the kernels are switched on (`$QWEN3TTS_JAX_CPU_KERNELS` != "0") and built and
    registered (compiled on the first call)."""
    return os.environ.get(SWITCH, "1") != "0" and _registered()


@functools.cache
def _registered() -> bool:
    try:
        import jaxlib

        key = hashlib.sha256(SOURCE.read_bytes() + jaxlib.__version__.encode() + _cpu_identity().encode())
        lib_path = paths.kernels_dir() / f"bf16_matmul-{key.hexdigest()[:16]}.so"
        if not lib_path.exists():
            _compile(lib_path)
        lib = ctypes.cdll.LoadLibrary(str(lib_path))
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.Qwen3TtsBf16Matmul), platform="cpu")
        return True
    except Exception as err:  # no compiler, no headers, a read-only cache: fall back, say why once
        log.warning("qwen3tts_jax CPU kernels unavailable, using XLA's dot instead: %s", err)
        return False


def bf16_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """`x [..., K] (float32) @ w.T` for a bfloat16 weight `w [N, K]`, float32 arithmetic.

    Uses the kernel on the CPU backend when it is registered, else XLA's dot on the widened
    weight (the same values; fast on accelerators, slow on CPU). Whether to pack weights for it
    at all is the caller's choice (`available()`), made once per engine.
    """
    if jax.default_backend() != "cpu" or not _registered():
        return jax.lax.dot_general(x, w.astype(x.dtype), (((x.ndim - 1,), (1,)), ((), ())))
    flat = x.reshape(-1, x.shape[-1])
    y = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((flat.shape[0], w.shape[0]), jnp.float32))(flat, w)
    return y.reshape(*x.shape[:-1], w.shape[0])
