"""A lazy, validating safetensors reader that returns numpy arrays (bfloat16 included).

`safetensors`' numpy backend cannot represent bfloat16, and the released talker weights are
bfloat16, so the header is parsed here and tensors are viewed from a memory map with
`ml_dtypes`. Headers are validated up front (offsets inside the file, sizes matching
shapes), so a truncated or corrupt file fails before any conversion work.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class SafetensorsError(ValueError):
    pass


class SafetensorsFile:
    """Tensors of one file: `.shapes` from the header, `.get(key)` reads one tensor."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                raw_len = f.read(8)
                if len(raw_len) < 8:
                    raise SafetensorsError(f"{self.path}: truncated (no header)")
                (header_len,) = struct.unpack("<Q", raw_len)
                if header_len > size - 8:
                    raise SafetensorsError(f"{self.path}: truncated (header of {header_len} bytes "
                                           f"in a file of {size} bytes)")
                header = json.loads(f.read(header_len))
        except FileNotFoundError:
            raise SafetensorsError(f"missing weights file: {self.path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{self.path}: corrupt header ({e})") from None
        header.pop("__metadata__", None)
        self._data_start = 8 + header_len
        data_len = size - self._data_start
        self._entries: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for key, info in header.items():
            dtype = _DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise SafetensorsError(f"{self.path}: tensor {key!r} has unsupported dtype {info.get('dtype')!r}")
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
            expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if end - begin != expected:
                raise SafetensorsError(f"{self.path}: tensor {key!r} has {end - begin} bytes, "
                                       f"shape {shape} needs {expected}")
            if end > data_len:
                raise SafetensorsError(f"{self.path}: truncated: tensor {key!r} ends at byte "
                                       f"{end} of a {data_len}-byte data section")
            self._entries[key] = (np.dtype(dtype), shape, begin, end)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v[1] for k, v in self._entries.items()}

    def dtype(self, key: str) -> np.dtype:
        return self._entries[key][0]

    def get(self, key: str) -> np.ndarray:
        """Read one tensor into a fresh array.

        Plain reads, not a memory map: mapped file pages count in the process's resident
        memory, so mapping a multi-GB checkpoint would look like (and on tight machines act
        like) one more copy of the weights.
        """
        dtype, shape, begin, end = self._entries[key]
        out = np.empty(shape, dtype)
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            if f.readinto(memoryview(out.reshape(-1).view(np.uint8))) != end - begin:
                raise SafetensorsError(f"{self.path}: truncated while reading tensor {key!r}")
        return out

    def close(self) -> None:
        """Nothing stays open between reads (kept for symmetry with file-like objects)."""


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray]) -> None:
    """Write numpy arrays (bfloat16 included) in the safetensors format."""
    names = {np.dtype(v): k for k, v in _DTYPES.items()}
    header, offset, order = {}, 0, sorted(tensors)
    for key in order:
        arr = tensors[key]
        nbytes = arr.nbytes
        header[key] = {"dtype": names[arr.dtype], "shape": list(arr.shape),
                       "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key in order:
            f.write(np.ascontiguousarray(tensors[key]).tobytes())
