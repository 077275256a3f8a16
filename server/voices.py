"""The voice store: voices on disk, their cached voice prompts, and registration.

Layout (docs/PROTOCOL.md): `VOICES_DIR/<voiceId>/manifest.json`, `reference.wav` (or .flac),
`transcript.txt` (absent for an x-vector-only voice). The shipped voices in `server/voices/`
are copied into VOICES_DIR on first start, so one directory holds everything.

A voice prompt (reference codes + speaker embedding) costs a pass of the speech tokenizer and
the speaker encoder, so it is computed once: kept in a bounded in-memory LRU and persisted
next to the voice as `prompt-<modelKey>.npz` with a `.json` sidecar holding the SHA-256 of the
reference audio and transcript it came from. A changed reference file or transcript (or other
weights) misses both caches and the prompt is recomputed.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from .protocol import VOICE_ID_RE, ProtocolError, RegisterVoice

log = logging.getLogger("qwen3tts.server")

BUILTIN_VOICES = Path(__file__).resolve().parent / "voices"
REFERENCE_NAMES = ("reference.wav", "reference.flac")


@dataclass(frozen=True)
class Voice:
    id: str
    dir: Path
    manifest: dict
    reference: Path
    transcript: str | None

    def public(self) -> dict:
        m = self.manifest
        return {"id": self.id, "name": m.get("name", self.id), "language": m.get("language"),
                "description": m.get("description", ""), "isDefault": bool(m.get("isDefault"))}


def valid_voice_id(voice_id: Any) -> bool:
    return isinstance(voice_id, str) and VOICE_ID_RE.fullmatch(voice_id) is not None


class VoiceStore:
    def __init__(self, root: Path, builtin: Path | None = BUILTIN_VOICES, cache_size: int = 32,
                 max_voices: int = 256, max_audio_seconds: float = 60.0,
                 min_audio_seconds: float = 0.5):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache_size = cache_size
        self.max_voices = max_voices
        self.max_audio_seconds = max_audio_seconds
        self.min_audio_seconds = min_audio_seconds
        self._lru: OrderedDict[tuple, Any] = OrderedDict()
        self._inflight: dict[tuple, asyncio.Future] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._hashes: dict[Path, tuple[int, int, str]] = {}
        self.prompt_computations = 0
        self._default: str | None = None
        self._recover()
        if builtin is not None and builtin.is_dir():
            for src in sorted(builtin.iterdir()):
                if (src / "manifest.json").is_file() and not (self.root / src.name).exists():
                    shutil.copytree(src, self.root / src.name,
                                    ignore=shutil.ignore_patterns("prompt-*"))

    # -- lookup ---------------------------------------------------------------------------
    def _recover(self, older_than_s: float = 600.0) -> None:
        """Undo what a process killed mid-registration left (a half-written voice is never
        listed: its folder's name starts with a dot). Folders older than `older_than_s` (a
        registration takes seconds; replicas may share this folder and be registering now):
        a `.tmp-*` one is removed; a `.trash-<id>-*` one, the old voice of an overwrite killed
        between its two renames, is put back when `<id>` is missing, else removed."""
        cutoff = time.time() - older_than_s
        for d in sorted(self.root.glob(".trash-*")):
            if d.stat().st_mtime > cutoff:
                continue
            voice_id = d.name[len(".trash-"):].rsplit("-", 1)[0]
            target = self.root / voice_id
            if valid_voice_id(voice_id) and not target.exists():
                os.rename(d, target)
                log.warning(json.dumps({"event": "voice_restored", "voice": voice_id}))
            else:
                shutil.rmtree(d, ignore_errors=True)
        for d in self.root.glob(".tmp-*"):
            if d.stat().st_mtime <= cutoff:
                shutil.rmtree(d, ignore_errors=True)
                log.warning(json.dumps({"event": "voice_partial_removed", "path": d.name}))

    def _load(self, voice_id: str) -> Voice | None:
        d = self.root / voice_id
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        ref_name = manifest.get("reference") or next(
            (n for n in REFERENCE_NAMES if (d / n).is_file()), None)
        if not isinstance(ref_name, str) or not valid_file_name(ref_name) or not (d / ref_name).is_file():
            return None
        transcript = None
        t_name = manifest.get("transcript")
        if isinstance(t_name, str) and valid_file_name(t_name) and (d / t_name).is_file():
            transcript = (d / t_name).read_text(encoding="utf-8").strip() or None
        return Voice(voice_id, d, manifest, d / ref_name, transcript)

    def get(self, voice_id: Any) -> Voice:
        """The voice with this id; VOICE_NOT_FOUND for unknown or malformed ids (never a path)."""
        voice = self._load(voice_id) if valid_voice_id(voice_id) else None
        if voice is None:
            shown = voice_id if isinstance(voice_id, str) else repr(voice_id)
            raise ProtocolError("VOICE_NOT_FOUND", f"unknown voice {shown[:80]!r}")
        return voice

    def list(self) -> list[Voice]:
        out = []
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and valid_voice_id(d.name):
                v = self._load(d.name)
                if v is not None:
                    out.append(v)
        return out

    def default_id(self) -> str | None:
        """The default voice (manifest `isDefault`, preferring "default"); cached while it exists."""
        if self._default is not None and (self.root / self._default / "manifest.json").is_file():
            return self._default
        self._default = self._find_default()
        return self._default

    def _find_default(self) -> str | None:
        voices = self.list()
        defaults = [v.id for v in voices if v.manifest.get("isDefault")]
        if "default" in defaults or (not defaults and any(v.id == "default" for v in voices)):
            return "default"
        if defaults:
            return defaults[0]
        return voices[0].id if voices else None

    # -- prompts --------------------------------------------------------------------------
    def _sha(self, path: Path) -> str:
        st = path.stat()
        memo = self._hashes.get(path)
        if memo and memo[:2] == (st.st_mtime_ns, st.st_size):
            return memo[2]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self._hashes[path] = (st.st_mtime_ns, st.st_size, digest)
        return digest

    def fingerprint(self, voice: Voice) -> dict:
        return {"referenceSha256": self._sha(voice.reference),
                "transcriptSha256": hashlib.sha256((voice.transcript or "").encode()).hexdigest(),
                "xVectorOnly": voice.transcript is None}

    def _remember(self, key: tuple, prompt: Any) -> None:
        self._lru[key] = prompt
        self._lru.move_to_end(key)
        while len(self._lru) > self.cache_size:
            self._lru.popitem(last=False)

    def _key(self, voice: Voice, backend) -> tuple[tuple, dict]:
        fp = self.fingerprint(voice)
        return (voice.id, backend.model_key, fp["referenceSha256"], fp["transcriptSha256"]), fp

    async def prompt(self, voice: Voice, worker) -> Any:
        """The voice prompt for `voice` under the worker's model: memory, then disk, then compute."""
        key, fp = self._key(voice, worker.backend)
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._lru[key]
        if key in self._inflight:
            return await asyncio.shield(self._inflight[key])
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            prompt = await worker.call(lambda b: self.load_or_compute(b, voice, fp))
            self._remember(key, prompt)
            worker.warm_voice(prompt)
            fut.set_result(prompt)
            return prompt
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: there may be no other waiter
            raise
        finally:
            self._inflight.pop(key, None)

    def remember(self, voice: Voice, backend, prompt: Any) -> None:
        self._remember(self._key(voice, backend)[0], prompt)

    def load_or_compute(self, backend, voice: Voice, fp: dict) -> Any:
        """Device-worker body: the prompt from the disk cache when it matches, else computed and saved."""
        npz = voice.dir / f"prompt-{backend.model_key}.npz"
        meta = npz.with_suffix(".json")
        try:
            if npz.is_file() and json.loads(meta.read_text()) == fp:
                return backend.prompt_cls.load(npz)
        except Exception as exc:  # noqa: BLE001 - a bad cache file is just a miss
            log.warning(json.dumps({"event": "prompt_cache_unreadable", "voice": voice.id,
                                    "error": repr(exc)}))
        self.prompt_computations += 1
        t0 = time.perf_counter()
        prompt = compute_and_save(backend, voice.reference, voice.transcript, npz, meta, fp)
        log.info(json.dumps({"event": "voice_prompt_computed", "voice": voice.id,
                             "ms": round(1000 * (time.perf_counter() - t0), 1)}))
        return prompt

    # -- registration ---------------------------------------------------------------------
    async def register(self, msg: RegisterVoice, worker, languages: list[str]) -> Voice:
        if not valid_voice_id(msg.voice_id):
            raise ProtocolError("BAD_REQUEST", "invalid voiceId: use 1-64 letters, digits, '_' or "
                                "'-', starting with a letter or digit")
        language = None
        if msg.language is not None:
            language = canonical_language(msg.language, languages)
        lock = self._locks.setdefault(msg.voice_id, asyncio.Lock())
        async with lock:
            existing = self._load(msg.voice_id)
            if existing is not None and not msg.overwrite:
                raise ProtocolError("BAD_REQUEST", f"voice {msg.voice_id!r} exists; send "
                                    "\"overwrite\": true to replace it")
            if existing is not None and existing.manifest.get("isDefault"):
                raise ProtocolError("BAD_REQUEST", "the default voice cannot be replaced")
            if existing is None and len(self.list()) >= self.max_voices:
                raise ProtocolError("RATE_LIMITED", "too many voices on this server")
            wav, sr = await asyncio.to_thread(self._decode, msg.audio)
            tmp = self.root / f".tmp-{msg.voice_id}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                await asyncio.to_thread(self._write, tmp, msg, wav, sr, language)
                voice = Voice(msg.voice_id, tmp, {}, tmp / "reference.wav", msg.transcript or None)
                fp = self.fingerprint(voice)
                npz = tmp / f"prompt-{worker.backend.model_key}.npz"
                try:
                    prompt = await worker.call(lambda b: compute_and_save(
                        b, voice.reference, voice.transcript, npz, npz.with_suffix(".json"), fp))
                except ProtocolError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the model rejected the audio
                    raise ProtocolError("BAD_REQUEST", f"reference audio rejected: {exc}") from None
                self.prompt_computations += 1
                await asyncio.to_thread(self._commit, tmp, self.root / msg.voice_id)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            voice = self.get(msg.voice_id)
            self._lru = OrderedDict((k, v) for k, v in self._lru.items() if k[0] != msg.voice_id)
            fp = self.fingerprint(voice)
            self._remember((voice.id, worker.backend.model_key, fp["referenceSha256"],
                            fp["transcriptSha256"]), prompt)
            worker.warm_voice(prompt)
            log.info(json.dumps({"event": "voice_registered", "voice": voice.id,
                                 "seconds": round(len(wav) / sr, 2), "overwrite": existing is not None}))
            return voice

    def _decode(self, data: bytes) -> tuple[np.ndarray, int]:
        try:
            wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception as exc:  # noqa: BLE001 - libsndfile raises several types
            raise ProtocolError("BAD_REQUEST", f"audio does not decode as WAV/FLAC/OGG: {exc}") from None
        wav = wav.mean(axis=1)
        seconds = len(wav) / sr if sr else 0.0
        if not (self.min_audio_seconds <= seconds <= self.max_audio_seconds):
            raise ProtocolError("BAD_REQUEST", f"reference audio must be {self.min_audio_seconds}-"
                                f"{self.max_audio_seconds} s long, got {seconds:.2f} s")
        if not np.isfinite(wav).all():
            raise ProtocolError("BAD_REQUEST", "reference audio has non-finite samples")
        return wav, int(sr)

    @staticmethod
    def _write(tmp: Path, msg: RegisterVoice, wav: np.ndarray, sr: int, language: str | None) -> None:
        sf.write(tmp / "reference.wav", wav, sr, subtype="PCM_16")
        transcript = (msg.transcript or "").strip()
        if transcript:
            (tmp / "transcript.txt").write_text(transcript + "\n", encoding="utf-8")
        manifest = {"id": msg.voice_id, "name": msg.name or msg.voice_id, "language": language,
                    "description": msg.description or "", "isDefault": False,
                    "reference": "reference.wav",
                    "transcript": "transcript.txt" if transcript else None}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    @staticmethod
    def _commit(tmp: Path, target: Path) -> None:
        """Swap the finished directory into place with renames (atomic per rename)."""
        trash = None
        if target.exists():
            trash = target.with_name(f".trash-{target.name}-{uuid.uuid4().hex[:8]}")
            os.rename(target, trash)
        os.rename(tmp, target)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def compute_and_save(backend, reference: Path, transcript: str | None, npz: Path, meta: Path,
                     fp: dict) -> Any:
    """Worker-thread body: compute a voice prompt and persist it (write-then-rename)."""
    prompt = backend.tts.create_voice_prompt(str(reference), ref_text=transcript)
    try:
        tmp = npz.with_name(f".{npz.stem}-{uuid.uuid4().hex[:8]}.npz")
        prompt.save(tmp)
        os.replace(tmp, npz)
        meta.write_text(json.dumps(fp))
    except OSError as exc:  # a read-only voices dir still serves, it just recomputes
        log.warning(json.dumps({"event": "prompt_cache_write_failed", "error": repr(exc)}))
    return prompt


def valid_file_name(name: str) -> bool:
    return "/" not in name and "\\" not in name and name not in ("", ".", "..") and not name.startswith(".")


def canonical_language(value: str, languages: list[str]) -> str:
    """Case-insensitive match against the model's languages; "auto" is always allowed."""
    if value.lower() == "auto":
        return "auto"
    for lang in languages:
        if lang.lower() == value.lower():
            return lang
    raise ProtocolError("BAD_REQUEST", f"unsupported language {value[:40]!r}; use one of "
                        f"{languages + ['auto']}", field="language")
