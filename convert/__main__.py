"""`python -m qwen3tts_jax.convert SRC DST [--dtype bfloat16|float32] [--overwrite]`."""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen3tts_jax.convert",
        description="Convert an official Qwen3-TTS 12 Hz checkpoint (local folder or hub id) "
                    "into Flax parameters for qwen3tts_jax.")
    parser.add_argument("src", help="checkpoint folder, or a hub id such as Qwen/Qwen3-TTS-12Hz-0.6B-Base")
    parser.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="dtype of the talker and code predictor weights (the speech tokenizer "
                             "and speaker encoder always stay float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from qwen3tts_jax.convert.converter import ConversionError, convert_checkpoint
    start = time.perf_counter()
    try:
        out = convert_checkpoint(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite,
                                 progress=not args.quiet)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
