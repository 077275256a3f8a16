"""Streaming audio encoders for the HTTP API: float32 mono chunks in, bytes of one file out.

`encoder(fmt, rate)` gives an object whose `encode(samples)` returns the bytes that can be
sent now and `finish()` the rest. pcm and wav are written here (a streamed WAV has the
open-ended header OpenAI's own streams use: RIFF and data sizes 0xFFFFFFFF, so players read to
the end instead of stopping after the first chunk); mp3, flac and Ogg/Opus come from libsndfile
through soundfile, encoding into a file whose new tail is read after every chunk; aac needs
PyAV (the `aac` extra). What a format's close would rewrite at the file's start (FLAC's sample
count, for one) has been sent already and stays as written: both are valid "length unknown"
streams, which is what a stream is.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

from .protocol import encode_pcm

CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",  # Ogg/Opus, as OpenAI labels it
    "aac": "audio/aac",  # ADTS
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",  # raw s16le mono
}
FORMATS = tuple(CONTENT_TYPES)
# libsndfile's formats and options; mp3 at a constant ~128 kbps (its default VBR is ~12 kbps).
_SOUNDFILE = {"mp3": ("MP3", "MPEG_LAYER_III", {"bitrate_mode": "CONSTANT", "compression_level": 0.3}),
              "flac": ("FLAC", "PCM_16", {}),
              "opus": ("OGG", "OPUS", {})}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


class UnsupportedFormat(ValueError):
    pass


def pcm16(samples: np.ndarray) -> bytes:
    """s16le bytes, exactly the WebSocket's `pcm16` (one conversion for every front end)."""
    return encode_pcm(samples, "pcm16")


class PcmEncoder:
    def __init__(self, rate: int):
        self.rate = rate

    def encode(self, samples: np.ndarray) -> bytes:
        return pcm16(samples)

    def finish(self) -> bytes:
        return b""


class WavEncoder(PcmEncoder):
    def __init__(self, rate: int):
        super().__init__(rate)
        self._header_sent = False

    def header(self) -> bytes:
        return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
                + struct.pack("<IHHIIHH", 16, 1, 1, self.rate, self.rate * 2, 2, 16)
                + b"data" + struct.pack("<I", 0xFFFFFFFF))

    def encode(self, samples: np.ndarray) -> bytes:
        out = b"" if self._header_sent else self.header()
        self._header_sent = True
        return out + pcm16(samples)

    def finish(self) -> bytes:
        return b"" if self._header_sent else self.header()  # an empty stream is still a WAV file


class _Tail(io.BytesIO):
    """The file libsndfile writes; `take()` returns what was appended since the last call."""

    def __init__(self):
        super().__init__()
        self._sent = 0

    def take(self) -> bytes:
        data = self.getbuffer()[self._sent:].tobytes()
        self._sent += len(data)
        return data


class SoundFileEncoder:
    def __init__(self, fmt: str, rate: int):
        container, subtype, options = _SOUNDFILE[fmt]
        if fmt == "opus" and rate not in OPUS_RATES:
            raise UnsupportedFormat(f"opus cannot carry {rate} Hz audio")
        self.rate = rate
        self._file = _Tail()
        self._sf = sf.SoundFile(self._file, "w", samplerate=rate, channels=1, format=container, subtype=subtype,
                                **options)

    def encode(self, samples: np.ndarray) -> bytes:
        self._sf.write(np.asarray(samples, dtype=np.float32))
        return self._file.take()

    def finish(self) -> bytes:
        self._sf.close()
        return self._file.take()


class AacEncoder:
    """ADTS AAC through PyAV (optional: `pip install 'qwen3tts-jax[aac]'`)."""

    def __init__(self, rate: int):
        try:
            import av
        except ImportError:
            raise UnsupportedFormat("response_format 'aac' needs PyAV: pip install 'qwen3tts-jax[aac]'") from None
        self.rate = rate
        self._av = av
        self._file = _Tail()
        self._container = av.open(self._file, "w", format="adts")
        self._stream = self._container.add_stream("aac", rate=rate, layout="mono")
        self._pts = 0

    def encode(self, samples: np.ndarray) -> bytes:
        x = np.asarray(samples, dtype=np.float32).reshape(1, -1)
        if x.shape[1] == 0:
            return b""  # FFmpeg refuses an empty frame
        frame = self._av.AudioFrame.from_ndarray(x, format="flt", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        self._pts += x.shape[1]
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._file.take()

    def finish(self) -> bytes:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._file.take()


def encoder(fmt: str, rate: int):
    """A streaming encoder of `fmt` (one of FORMATS) at `rate` Hz; UnsupportedFormat if it cannot be."""
    if fmt == "pcm":
        return PcmEncoder(rate)
    if fmt == "wav":
        return WavEncoder(rate)
    if fmt == "aac":
        return AacEncoder(rate)
    if fmt in _SOUNDFILE:
        return SoundFileEncoder(fmt, rate)
    raise UnsupportedFormat(f"unknown response_format {fmt!r}; one of {list(FORMATS)}")
