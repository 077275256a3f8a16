"""Peak memory and time of `python -m qwen3tts_jax.convert` on the full-size 0.6B-Base checkpoint.

    python benchmarks/convert_memory.py [--dtype bfloat16]

Runs the real CLI in a child process and reads its peak RSS (ru_maxrss of the child), and
compares it with the size of the weights (bfloat16 source as released).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time

from common import CACHE, REPO, full_size_checkpoint, write_result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    args = parser.parse_args()
    src = full_size_checkpoint()
    weights = sum(p.stat().st_size for p in src.rglob("*.safetensors"))
    dst = CACHE / "convert-memory-out"
    shutil.rmtree(dst, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qwen3tts_jax.convert", str(src), str(dst), "--dtype", args.dtype, "--quiet"],
                   check=True, cwd=REPO)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    out = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
    shutil.rmtree(dst, ignore_errors=True)
    write_result(f"convert_memory_{args.dtype}", {
        "command": f"python -m qwen3tts_jax.convert <real-0.6b bf16 folder> DST --dtype {args.dtype}",
        "source_weights_gb": round(weights / 1e9, 3), "output_gb": round(out / 1e9, 3),
        "peak_rss_gb": round(peak / 1e9, 3), "peak_over_source": round(peak / weights, 2),
        "seconds": round(seconds, 1)})


if __name__ == "__main__":
    main()
