"""`python -m qwen3tts_jax synthesize --model DIR --text ... --out out.wav` with the voice the model takes:
`--ref-audio ... [--ref-text ...]` (Base), `--speaker NAME [--instruct ...]` (CustomVoice),
`--instruct "a voice described"` (VoiceDesign).

Text longer than one sentence is split at sentence ends and spoken piece by piece (the
model's quality drops on very long single requests), with a progress bar over the pieces;
the pieces share the voice prompt and are joined in order.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
    """Sentence-sized pieces (ends: . ! ? and their CJK forms), none longer than `max_chars`."""
    pieces = [p.strip() for p in re.split(r"(?<=[.!?。！？])\s*", text) if p.strip()]
    out: list[str] = []
    for piece in pieces:
        while len(piece) > max_chars:
            cut = piece.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            out.append(piece[:cut].strip())
            piece = piece[cut:].strip()
        if piece:
            out.append(piece)
    return out


def check_out(path: str, subtype: str) -> None:
    """ValueError unless soundfile can write `subtype` samples to `path` (its folder, its format)."""
    import soundfile as sf

    out = Path(path)
    if not out.parent.is_dir():
        raise ValueError(f"--out {path}: no folder {out.parent}")
    fmt = out.suffix[1:].upper()
    if fmt not in sf.available_formats():
        raise ValueError(f"--out {path}: unknown audio format {out.suffix!r}; use .wav or .flac")
    if not sf.check_format(fmt, subtype):
        raise ValueError(f"--out {path}: {fmt} files cannot hold {subtype} samples" +
                         ("; drop --float or use .wav" if subtype == "FLOAT" else "; use .wav or .flac"))


def synthesize(args: argparse.Namespace) -> int:
    import numpy as np
    import soundfile as sf
    from tqdm import tqdm

    from qwen3tts_jax import Qwen3TTS

    check_out(args.out, "FLOAT" if args.float else "PCM_16")  # before minutes of synthesis, not after
    start = time.perf_counter()
    tts = Qwen3TTS.from_pretrained(args.model, dtype=args.dtype)
    voice = None
    if args.ref_audio is not None:
        voice = tts.create_voice_prompt(args.ref_audio, ref_text=args.ref_text)
    elif tts.model_type == "base":
        raise ValueError("this Base model clones a voice: give --ref-audio (and --ref-text for ICL cloning)")
    pieces = split_sentences(args.text)
    if not pieces:
        print("error: the text is empty", file=sys.stderr)
        return 2
    wavs = []
    for i, piece in enumerate(tqdm(pieces, unit="sentence", disable=args.quiet or len(pieces) == 1)):
        wav, sr = tts.synthesize(piece, voice=voice, language=args.language, speaker=args.speaker,
                                 instruct=args.instruct, seed=args.seed + i, greedy=args.greedy,
                                 max_new_frames=args.max_new_frames)
        wavs.append(wav)
    audio = np.concatenate(wavs)
    sf.write(args.out, audio, sr, subtype="FLOAT" if args.float else "PCM_16")
    print(f"wrote {args.out}: {len(audio) / sr:.2f} s of audio in {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen3tts_jax", description="Qwen3-TTS in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synthesize", help="speak a text into an audio file")
    p.add_argument("--model", required=True, help="converted or official checkpoint folder, or a hub id")
    p.add_argument("--text", required=True)
    p.add_argument("--ref-audio", default=None,
                   help="Base models: reference clip of the voice to clone (wav, flac, ...)")
    p.add_argument("--ref-text", default=None,
                   help="Base models: transcript of the reference clip (ICL cloning); without it: x-vector only")
    p.add_argument("--speaker", default=None, help="CustomVoice models: a preset speaker, e.g. ryan or vivian")
    p.add_argument("--instruct", default=None,
                   help="CustomVoice 1.7B: how to speak; VoiceDesign: the voice, described in words")
    p.add_argument("--language", default="auto", help='e.g. English, Chinese, or "auto"')
    p.add_argument("--out", default="out.wav")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="default: float32 on CPU, bfloat16 on accelerators")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--max-new-frames", type=int, default=None, help="cap per sentence (12.5 frames per second)")
    p.add_argument("--float", action="store_true", help="write 32-bit float samples (default 16-bit PCM)")
    p.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        return synthesize(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def synthesize_main(argv: list[str] | None = None) -> int:
    """The `qwen3tts-synthesize` console script: `python -m qwen3tts_jax synthesize ...`."""
    return main(["synthesize", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
