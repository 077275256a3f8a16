"""The talker's prefill prompt for voice cloning (REFERENCE-FACTS 3.3), as id tracks first.

Every prompt row is one vector: a text-track part plus a codec-track part. `build_layout`
decides, with plain integers, what each row holds: a text id (through P = text_projection
o text_embedding), a codec id (through C, the talker's codec embedding), the speaker
x-vector, or a reference frame (F = the sum of its 16 codebook embeddings). `embed_layout`
then turns a layout into vectors in one jitted call per length bucket.

Rows, with a language (for "auto" the four codec rows are nothink, think_bos, think_eos):
  0-2  P(role ids): the first three ids of the tokenized template, "<|im_start|>assistant\\n"
  3-6  tts_pad + C(think), C(think_bos), C(lang), C(think_eos)
  7    tts_pad + x-vector
  8    tts_bos + C(codec_pad)
then one of four tails (ICL or x-vector-only, streaming or non-streaming text).
`trailing_ids` are the text ids fed one per decode step afterwards (then tts_pad forever).

Every id comes from the checkpoint: the role ids from its tokenizer (as the reference slices
`input_id[:, :3]`), the tts_* ids from `config.json`, the codec ids from its talker config.
`PromptBuilder` checks at load that each lies inside the table it indexes (a gather past a
table's end returns NaN under jit, silently), and `embed_layout` checks every layout again.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen3tts_jax import buckets
from qwen3tts_jax.code_predictor import frame_embedding
from qwen3tts_jax.config import Qwen3TTSConfig
from qwen3tts_jax.text_tokenizer import TextTokenizer
from qwen3tts_jax.voice import VoicePrompt

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


def build_layout(cfg: Qwen3TTSConfig, role_ids: tuple[int, ...], text_ids: list[int], *, language: str,
                 ref_text_ids: list[int] | None = None, num_ref_frames: int | None = None,
                 non_streaming_text: bool = False) -> PromptLayout:
    """Rows of the prefill prompt. `role_ids`: the tokenizer's ids of "<|im_start|>assistant\\n";
    `text_ids`: the target text tokens (without the template); `ref_text_ids` +
    `num_ref_frames`: ICL mode; neither: x-vector-only mode."""
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

    text: list[int] = [*role_ids] + [pad] * (len(tags) + 1) + [bos]
    codec: list[int] = [NONE] * len(role_ids) + tags + [NONE, t.codec_pad_id]
    frames: list[int] = [NONE] * len(text)
    speaker_row = len(role_ids) + len(tags)

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


class PromptBuilder:
    """Text, voice and language -> `PromptLayout`, with every id from the checkpoint's own files.

    Built once per model: checks that the tokenizer fits the text embedding and that every id
    a prompt can use lies inside the table it indexes (`check_ids`).
    """

    def __init__(self, config: Qwen3TTSConfig, tokenizer: TextTokenizer, source: str = "the checkpoint"):
        self.config = config
        self.tokenizer = tokenizer
        self.role_ids = tuple(tokenizer.role_ids)
        check_ids(config, tokenizer, source)

    def layout(self, text: str, voice: VoicePrompt, language: str = "auto",
               non_streaming_text: bool = False) -> PromptLayout:
        """The prompt of one request; a clear ValueError for an unknown language, a voice made
        by another model, or text the tokenizer cannot take."""
        t = self.config.talker
        if language.lower() != "auto":
            t.language_id(language)  # a clear error for unknown languages
        if voice.speaker_embedding.shape != (t.hidden_size,):
            raise ValueError(f"voice speaker_embedding has shape {voice.speaker_embedding.shape}, this model "
                             f"needs ({t.hidden_size},): was it made with another model?")
        if voice.ref_codes is not None:
            check_ref_codes(self.config, voice.ref_codes)
        text_ids = self.tokenizer.text_ids(text)
        ref_ids = None if voice.ref_codes is None else self.tokenizer.ref_text_ids(voice.ref_text)
        layout = build_layout(self.config, self.role_ids, text_ids, language=language, ref_text_ids=ref_ids,
                              num_ref_frames=None if voice.ref_codes is None else len(voice.ref_codes),
                              non_streaming_text=non_streaming_text)
        check_layout(self.config, layout)
        return layout


def check_ids(config: Qwen3TTSConfig, tokenizer: TextTokenizer, source: str = "the checkpoint") -> None:
    """ValueError unless every id a prompt can use indexes inside its table: the tokenizer's
    vocabulary and the role and tts_* ids inside the text embedding (`text_vocab_size`), the
    codec control and language ids inside the codec embedding (`vocab_size`)."""
    t = config.talker
    problems = []
    size = len(tokenizer)
    if size > t.text_vocab_size:
        problems.append(f"the tokenizer (vocab.json + tokenizer_config.json) has {size} tokens, more than "
                        f"config.json talker_config.text_vocab_size = {t.text_vocab_size}")
    text_ids = {"tokenizer role id of '<|im_start|>assistant\\n'": tokenizer.role_ids,
                "config.json tts_pad_token_id": [config.tts_pad_token_id],
                "config.json tts_bos_token_id": [config.tts_bos_token_id],
                "config.json tts_eos_token_id": [config.tts_eos_token_id]}
    for what, ids in text_ids.items():
        for i in ids:
            if not 0 <= i < t.text_vocab_size:
                problems.append(f"{what} {i} is outside the text embedding (text_vocab_size {t.text_vocab_size})")
    codec_ids = {f"config.json talker_config.{name}": getattr(t, name) for name in (
        "codec_pad_id", "codec_bos_id", "codec_eos_token_id", "codec_think_id", "codec_nothink_id",
        "codec_think_bos_id", "codec_think_eos_id")}
    codec_ids.update({f"config.json talker_config.codec_language_id[{name!r}]": i for name, i in t.codec_language_id})
    codec_ids.update({f"config.json talker_config.spk_id[{name!r}]": i for name, i in t.spk_id})
    for what, i in codec_ids.items():
        for one in (i if isinstance(i, tuple) else (i,)):
            if not 0 <= one < t.vocab_size:
                problems.append(f"{what} {one} is outside the codec embedding (vocab_size {t.vocab_size})")
    if problems:
        raise ValueError(f"{source}: ids that index past their tables (they would embed as NaN):\n  "
                         + "\n  ".join(problems))


def check_ref_codes(config: Qwen3TTSConfig, codes: np.ndarray) -> None:
    """ValueError unless a voice's reference codes `[T, G]` fit this model's codebooks."""
    groups = config.talker.num_code_groups
    limit = config.code_predictor.vocab_size
    if codes.ndim != 2 or codes.shape[1] != groups:
        raise ValueError(f"voice ref_codes have shape {codes.shape}, this model takes [frames, {groups}]")
    if codes.size and (codes.min() < 0 or codes.max() >= limit):
        raise ValueError(f"voice ref_codes range over [{codes.min()}, {codes.max()}], this model's codebooks "
                         f"hold [0, {limit}): was the voice made with another model?")


def check_layout(config: Qwen3TTSConfig, layout: PromptLayout) -> None:
    """The ids of a layout against the embedding tables they index (host side, before jit)."""
    t = config.talker
    for name, ids, rows, lowest in (("text", layout.text_ids, t.text_vocab_size, NONE),
                                    ("codec", layout.codec_ids, t.vocab_size, NONE),
                                    ("trailing text", layout.trailing_ids, t.text_vocab_size, 0)):
        bad = ids[(ids < lowest) | (ids >= rows)]
        if bad.size:
            raise ValueError(f"{name} id {int(bad[0])} is outside its embedding ({rows} rows)")


@functools.partial(jax.jit, static_argnames=("talker_def", "predictor_def"))
def _embed(talker_def, talker_state, predictor_def, predictor_state, text_ids, codec_ids, speaker_row,
           ref_frames, speaker, ref_codes):
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


def embed_layout(talker_def, talker_state, predictor_def, predictor_state, layout: PromptLayout,
                 speaker: np.ndarray, ref_codes: np.ndarray | None, length: int, groups: int) -> jax.Array:
    """The prompt's vectors `[length, H]` (rows past `len(layout)` are padding); `groups`:
    codebooks per frame."""
    n = len(layout)
    if length < n:
        raise ValueError(f"bucket {length} is shorter than the prompt ({n} rows)")

    def pad(a):
        return np.pad(a, (0, length - n), constant_values=NONE)
    codes = np.zeros((1, groups), np.int32) if ref_codes is None else np.asarray(ref_codes, np.int32)
    codes = np.pad(codes, ((0, buckets.ref_frames(len(codes)) - len(codes)), (0, 0)))
    return _embed(talker_def, talker_state, predictor_def, predictor_state, pad(layout.text_ids),
                  pad(layout.codec_ids), np.int32(layout.speaker_row), pad(layout.ref_frames),
                  np.asarray(speaker), codes)


@functools.partial(jax.jit, static_argnames=("talker_def", "rows"))
def _embed_text(talker_def, talker_state, ids: jax.Array, rows: int) -> jax.Array:
    vecs = nnx.merge(talker_def, talker_state).embed_text(ids)
    return jnp.pad(vecs, ((0, rows - ids.shape[0]), (0, 0)))


def embed_text_ids(talker_def, talker_state, ids: np.ndarray, rows: int) -> jax.Array:
    """P(ids) padded with zero rows to `[rows, H]` (the trailing-text buffer of a row).

    Only a length bucket of ids goes through the text projection (a 2-layer MLP as wide as
    the text embedding): projecting the whole buffer would cost more than the prefill.
    """
    if len(ids) > rows:
        raise ValueError(f"{len(ids)} text ids do not fit {rows} rows")
    padded = np.zeros((min(buckets.prompt_rows(len(ids)), rows),), np.int32)
    padded[:len(ids)] = ids
    return _embed_text(talker_def, talker_state, padded, rows)
