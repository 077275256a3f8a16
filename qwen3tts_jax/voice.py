"""Voice prompts: what a reference clip contributes to generation, small and serializable.

A prompt holds the speaker x-vector and, in ICL mode, the reference clip's codes and its
transcript. Servers compute one per voice and keep it (`save` / `load`, a plain .npz).
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class VoicePrompt:
    speaker_embedding: np.ndarray       # float32 [enc_dim]
    ref_codes: np.ndarray | None = None  # int32 [T, 16]; None in x-vector-only mode
    ref_text: str | None = None

    def __post_init__(self):
        emb = np.asarray(self.speaker_embedding, np.float32)
        if emb.ndim != 1 or not np.isfinite(emb).all():
            raise ValueError(f"speaker_embedding must be a finite 1-D vector, got shape {emb.shape}")
        object.__setattr__(self, "speaker_embedding", emb)
        if self.ref_codes is not None:
            codes = np.asarray(self.ref_codes)
            if codes.ndim != 2 or codes.shape[0] == 0 or not np.issubdtype(codes.dtype, np.integer):
                raise ValueError(f"ref_codes must be integer [T, groups] with T > 0, got {codes.shape}")
            object.__setattr__(self, "ref_codes", codes.astype(np.int32))
            if not self.ref_text:
                raise ValueError("a prompt with reference codes (ICL) needs its ref_text")

    @property
    def x_vector_only(self) -> bool:
        return self.ref_codes is None

    def without_reference(self) -> VoicePrompt:
        """The same voice by its x-vector alone (no reference frames in the prompt): for text
        that arrives while speaking, whose audio then starts after its first tokens rather
        than after the ICL prompt's share of the text."""
        return self if self.ref_codes is None else VoicePrompt(self.speaker_embedding)

    def save(self, path: str | os.PathLike) -> None:
        """Write the prompt as .npz, atomically (temporary file + rename)."""
        path = Path(path)
        buf = io.BytesIO()
        arrays = {"format_version": np.int32(FORMAT_VERSION), "speaker_embedding": self.speaker_embedding}
        if self.ref_codes is not None:
            arrays["ref_codes"] = self.ref_codes
            arrays["ref_text"] = np.asarray(self.ref_text)
        np.savez(buf, **arrays)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> VoicePrompt:
        try:
            with np.load(path, allow_pickle=False) as z:
                version = int(z["format_version"])
                if version != FORMAT_VERSION:
                    raise ValueError(f"{path}: voice prompt format {version}, expected {FORMAT_VERSION}")
                codes = z["ref_codes"] if "ref_codes" in z else None
                text = str(z["ref_text"]) if "ref_text" in z else None
                return cls(z["speaker_embedding"], codes, text)
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a voice prompt ({e})") from e
