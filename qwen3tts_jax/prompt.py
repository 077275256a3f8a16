"""The talker's prefill prompt for voice cloning (REFERENCE-FACTS 3.3), as id tracks first.

Every prompt row is one vector: a text-track part plus a codec-track part. `build_layout`
decides, with plain integers, what each row holds: a text id (through P = text_projection
o text_embedding), a codec id (through C, the talker's codec embedding), the speaker
x-vector, or a reference frame (F = the sum of its 16 codebook embeddings). `embed_layout`
then turns a layout into vectors in one jitted call per length bucket.

Rows, with a language (for "auto" the four codec rows are nothink, think_bos, think_eos):
  0-2  P(<|im_start|>) P(assistant) P(\\n)          (text only)
  3-6  tts_pad + C(think), C(think_bos), C(lang), C(think_eos)
  7    tts_pad + x-vector
  8    tts_bos + C(codec_pad)
then one of four tails (ICL or x-vector-only, streaming or non-streaming text).
`trailing_ids` are the text ids fed one per decode step afterwards (then tts_pad forever).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from qwen3tts_jax.config import Qwen3TTSConfig

NONE = -1


@dataclasses.dataclass(frozen=True)
class PromptLayout:
    text_ids: np.ndarray    # [T] int32 text-track ids, NONE = no text part
    codec_ids: np.ndarray   # [T] int32 codec-track ids, NONE = no codec id
    speaker_row: int        # row holding the x-vector on the codec track
    ref_frames: np.ndarray  # [T] int32 index of the reference frame on the codec track, NONE = none
    trailing_ids: np.ndarray  # [N] int32 text ids for the decode steps

    def __len__(self) -> int:
        return len(self.text_ids)


def build_layout(cfg: Qwen3TTSConfig, text_ids: list[int], *, language: str,
                 ref_text_ids: list[int] | None = None, num_ref_frames: int | None = None,
                 non_streaming_text: bool = False) -> PromptLayout:
    """Rows of the prefill prompt. `text_ids`: the target text tokens (without the template);
    `ref_text_ids` + `num_ref_frames`: ICL mode; neither: x-vector-only mode."""
    t = cfg.talker
    if not text_ids:
        raise ValueError("the text has no tokens")
    icl = num_ref_frames is not None
    if icl and not ref_text_ids:
        raise ValueError("ICL voice cloning needs the reference transcript (ref_text)")
    pad, bos, eos = cfg.tts_pad_token_id, cfg.tts_bos_token_id, cfg.tts_eos_token_id
    if language.lower() == "auto":
        tags = [t.codec_nothink_id, t.codec_think_bos_id, t.codec_think_eos_id]
    else:
        tags = [t.codec_think_id, t.codec_think_bos_id, t.language_id(language), t.codec_think_eos_id]

    text: list[int] = [cfg.im_start_token_id, *_ASSISTANT_NEWLINE] + [pad] * (len(tags) + 1) + [bos]
    codec: list[int] = [NONE] * 3 + tags + [NONE, t.codec_pad_id]
    frames: list[int] = [NONE] * len(text)
    speaker_row = 3 + len(tags)

    def add(text_id: int, codec_id: int = NONE, frame: int = NONE) -> None:
        text.append(text_id)
        codec.append(codec_id)
        frames.append(frame)

    if icl:
        x = [*ref_text_ids, *text_ids, eos]            # text track
        y = [("codec", t.codec_bos_id)] + [("frame", i) for i in range(num_ref_frames)]
        if non_streaming_text:
            for tid in x:
                add(tid, t.codec_pad_id)
            for kind, v in y:
                add(pad, *((v, NONE) if kind == "codec" else (NONE, v)))
            trailing = [pad]
        else:
            for j, (kind, v) in enumerate(y):
                tid = x[j] if j < len(x) else pad
                add(tid, *((v, NONE) if kind == "codec" else (NONE, v)))
            trailing = x[len(y):] if len(x) > len(y) else [pad]
    elif non_streaming_text:
        for tid in [*text_ids, eos]:
            add(tid, t.codec_pad_id)
        add(pad, t.codec_bos_id)
        trailing = [pad]
    else:
        add(text_ids[0], t.codec_bos_id)
        trailing = [*text_ids[1:], eos]
    i32 = functools.partial(np.asarray, dtype=np.int32)
    return PromptLayout(i32(text), i32(codec), speaker_row, i32(frames), i32(trailing))


# "assistant", "\n": the reference slices `ids[:3]` of its template, always these two after <|im_start|>.
_ASSISTANT_NEWLINE = (77091, 198)


def bucket(n: int, minimum: int = 16) -> int:
    """The padded length for `n` rows: powers of two from `minimum`, then multiples of 256."""
    if n <= 256:
        size = minimum
        while size < n:
            size *= 2
        return size
    return -(-n // 256) * 256


@functools.partial(jax.jit, static_argnames=("talker_def", "predictor_def"))
def _embed(talker_def, talker_state, predictor_def, predictor_state, text_ids, codec_ids, speaker_row,
           ref_frames, speaker, ref_codes):
    from flax import nnx

    talker = nnx.merge(talker_def, talker_state)
    predictor = nnx.merge(predictor_def, predictor_state)
    zero = jnp.zeros((), talker.codec_head.weight.dtype)
    text = jnp.where((text_ids >= 0)[:, None], talker.embed_text(jnp.maximum(text_ids, 0)), zero)
    codec = jnp.where((codec_ids >= 0)[:, None], talker.embed_codec(jnp.maximum(codec_ids, 0)), zero)
    rows = jnp.arange(text_ids.shape[0])
    codec = jnp.where((rows == speaker_row)[:, None], speaker.astype(codec.dtype)[None], codec)
    frame_codes = ref_codes[jnp.maximum(ref_frames, 0)]                     # [T, G]
    frame_vec = frame_embedding(talker, predictor, frame_codes)
    codec = jnp.where((ref_frames >= 0)[:, None], frame_vec, codec)
    return text + codec


def frame_embedding(talker, predictor, codes: jax.Array) -> jax.Array:
    """F(frame) = C(c0) + sum_g E_g(c_g) for `codes [..., G]`."""
    total = talker.embed_codec(codes[..., 0])
    for g in range(1, codes.shape[-1]):
        total = total + predictor.embed_group(g, codes[..., g])
    return total


def embed_layout(talker_def, talker_state, predictor_def, predictor_state, layout: PromptLayout,
                 speaker: np.ndarray, ref_codes: np.ndarray | None, length: int) -> jax.Array:
    """The prompt's vectors `[length, H]` (rows past `len(layout)` are padding)."""
    n = len(layout)
    if length < n:
        raise ValueError(f"bucket {length} is shorter than the prompt ({n} rows)")

    def pad(a):
        return np.pad(a, (0, length - n), constant_values=NONE)
    groups = 16 if ref_codes is None else ref_codes.shape[1]
    codes = np.zeros((1, groups), np.int32) if ref_codes is None else np.asarray(ref_codes, np.int32)
    codes = np.pad(codes, ((0, bucket(len(codes), 8) - len(codes)), (0, 0)))
    return _embed(talker_def, talker_state, predictor_def, predictor_state, pad(layout.text_ids),
                  pad(layout.codec_ids), np.int32(layout.speaker_row), pad(layout.ref_frames),
                  np.asarray(speaker), codes)


@functools.partial(jax.jit, static_argnames=("talker_def", "rows"))
def _embed_text(talker_def, talker_state, ids: jax.Array, rows: int) -> jax.Array:
    from flax import nnx

    vecs = nnx.merge(talker_def, talker_state).embed_text(ids)
    return jnp.pad(vecs, ((0, rows - ids.shape[0]), (0, 0)))


def embed_text_ids(talker_def, talker_state, ids: np.ndarray, rows: int) -> jax.Array:
    """P(ids) padded with zero rows to `[rows, H]` (the trailing-text buffer of a row).

    Only a length bucket of ids goes through the text projection (a 2-layer MLP as wide as
    the text embedding): projecting the whole buffer would cost more than the prefill.
    """
    if len(ids) > rows:
        raise ValueError(f"{len(ids)} text ids do not fit {rows} rows")
    padded = np.zeros((min(bucket(len(ids)), rows),), np.int32)
    padded[:len(ids)] = ids
    return _embed_text(talker_def, talker_state, padded, rows)
