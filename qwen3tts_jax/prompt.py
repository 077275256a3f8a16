"""The talker's prefill prompt for voice cloning (REFERENCE-FACTS 3.3), as id tracks first.

Every prompt row is one vector: a text-track part plus a codec-track part. `build_layout`
decides, with plain integers, what each row holds: a text id (through P = text_projection
o text_embedding), a codec id (through C, the talker's codec embedding), the speaker
x-vector, or a reference frame (F = the sum of its 16 codebook embeddings). `embed_layout`
then turns a layout into vectors in one jitted call per length bucket.

Rows, with a language (for "auto" the four codec rows are nothink, think_bos, think_eos):
  I    P(instruct ids), text only: "<|im_start|>user\\n{instruct}<|im_end|>\\n" (CustomVoice
       1.7B and VoiceDesign, when an instruct is given; MODEL-FAMILY 4)
  0-2  P(role ids): the first three ids of the tokenized template, "<|im_start|>assistant\\n"
  3-6  tts_pad + C(think), C(think_bos), C(lang), C(think_eos)
  7    tts_pad + the speaker: the x-vector (Base), C(spk_id) (a CustomVoice preset speaker),
       or no row at all (VoiceDesign, or a CustomVoice request with speaker "")
  8    tts_bos + C(codec_pad)
then one of four tails (ICL or x-vector-only, streaming or non-streaming text); CustomVoice and
VoiceDesign have only the two x-vector-only-shaped ones. A dialect speaker (spk_is_dialect)
swaps the language id for its dialect's when the language is Chinese or auto.
`trailing_ids` are the text ids fed one per decode step afterwards (then tts_pad forever).

Every id comes from the checkpoint: the role ids from its tokenizer (as the reference slices
`input_id[:, :3]`), the tts_* ids from `config.json`, the codec ids from its talker config.
`PromptBuilder` checks at load that each lies inside the table it indexes (a gather past a
table's end returns NaN under jit, silently), and `embed_layout` checks every layout again.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen3tts_jax import buckets
from qwen3tts_jax.code_predictor import frame_embedding
from qwen3tts_jax.config import Qwen3TTSConfig
from qwen3tts_jax.text_tokenizer import TextTokenizer
from qwen3tts_jax.voice import VoicePrompt

log = logging.getLogger(__name__)

NONE = -1
XVECTOR = "xvector"  # `build_layout(speaker=...)`: the row holds the voice prompt's x-vector
MODEL_TYPES = ("base", "custom_voice", "voice_design")


@dataclasses.dataclass(frozen=True)
class PromptLayout:
    text_ids: np.ndarray    # [T] int32 text-track ids, NONE = no text part
    codec_ids: np.ndarray   # [T] int32 codec-track ids, NONE = no codec id
    speaker_row: int        # row holding the x-vector on the codec track, NONE = none
    ref_frames: np.ndarray  # [T] int32 index of the reference frame on the codec track, NONE = none
    trailing_ids: np.ndarray  # [N] int32 text ids for the decode steps

    def __len__(self) -> int:
        return len(self.text_ids)


def build_layout(cfg: Qwen3TTSConfig, role_ids: tuple[int, ...], text_ids: list[int], *, language: str,
                 ref_text_ids: list[int] | None = None, num_ref_frames: int | None = None,
                 non_streaming_text: bool = False, speaker: int | str | None = XVECTOR,
                 dialect: str | None = None, instruct_ids: list[int] | None = None) -> PromptLayout:
    """Rows of the prefill prompt. `role_ids`: the tokenizer's ids of "<|im_start|>assistant\\n";
    `text_ids`: the target text tokens (without the template); `ref_text_ids` +
    `num_ref_frames`: ICL mode; neither: x-vector-only mode. `speaker`: `XVECTOR` (the row
    holds the voice's x-vector), a preset speaker's codec id, or None (no speaker row);
    `dialect`: the speaker's dialect (a `codec_language_id` name); `instruct_ids`: text-only
    rows in front."""
    t = cfg.talker
    if not text_ids:
        raise ValueError("the text has no tokens")
    icl = num_ref_frames is not None
    if icl and not ref_text_ids:
        raise ValueError("ICL voice cloning needs the reference transcript (ref_text)")
    if icl and speaker != XVECTOR:
        raise ValueError("ICL reference frames go with an x-vector voice (Base models)")
    pad, bos, eos = cfg.tts_pad_token_id, cfg.tts_bos_token_id, cfg.tts_eos_token_id
    lang_id = None if language.lower() == "auto" else t.language_id(language)
    if dialect and language.lower() in ("chinese", "auto"):  # reference modeling_qwen3_tts.py:2118-2122
        lang_id = t.language_id(dialect)
    if lang_id is None:
        tags = [t.codec_nothink_id, t.codec_think_bos_id, t.codec_think_eos_id]
    else:
        tags = [t.codec_think_id, t.codec_think_bos_id, lang_id, t.codec_think_eos_id]
    spk = [] if speaker is None else [NONE if speaker == XVECTOR else int(speaker)]
    ins = list(instruct_ids or [])

    text: list[int] = ins + [*role_ids] + [pad] * (len(tags) + len(spk)) + [bos]
    codec: list[int] = [NONE] * (len(ins) + len(role_ids)) + tags + spk + [t.codec_pad_id]
    frames: list[int] = [NONE] * len(text)
    speaker_row = len(ins) + len(role_ids) + len(tags) if speaker == XVECTOR else NONE

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
    a prompt can use lies inside the table it indexes (`check_ids`). Knows what each model type
    takes (MODEL-FAMILY 5, 8): Base a voice prompt; CustomVoice a preset speaker and, at 1.7B,
    an instruct; VoiceDesign an instruct.
    """

    def __init__(self, config: Qwen3TTSConfig, tokenizer: TextTokenizer, source: str = "the checkpoint"):
        if config.tts_model_type not in MODEL_TYPES:
            raise ValueError(f"{source}: tts_model_type {config.tts_model_type!r} is not one of {MODEL_TYPES}")
        self.config = config
        self.tokenizer = tokenizer
        self.role_ids = tuple(tokenizer.role_ids)
        self._warned_instruct = False
        check_ids(config, tokenizer, source)

    @property
    def model_type(self) -> str:
        return self.config.tts_model_type

    @property
    def supports_instruct(self) -> bool:
        """CustomVoice 1.7B and VoiceDesign honour an instruct. The reference's wrapper drops it for
        a CustomVoice of size "0b6" (`if tts_model_size in "0b6"`, a substring test)."""
        size = self.config.tts_model_size
        if self.model_type == "voice_design":
            return True
        return self.model_type == "custom_voice" and not (size is not None and size in "0b6")

    def default_non_streaming_text(self) -> bool:
        """The reference's default text layout: streaming for Base, non-streaming otherwise."""
        return self.model_type != "base"

    def check(self, voice: VoicePrompt | None = None, language: str = "auto", speaker: str | None = None,
              instruct: str | None = None) -> None:
        """ValueError unless this model takes this voice, speaker, instruct and language (no
        tokenizing: cheap enough to check a whole batch before any of it runs)."""
        t, kind = self.config.talker, self.model_type
        if not isinstance(language, str):
            raise ValueError(f"language must be a str, got {type(language).__name__}")
        if "dialect" in language.lower():
            hint = [n for n, d in t.spk_is_dialect if d == language.lower()]
            raise ValueError(f"{language!r} is a dialect, not a language: it is spoken by the preset speaker(s) "
                             f"{hint or '(none of this model)'} with language 'Chinese' or 'auto'")
        if language.lower() != "auto":
            t.language_id(language)  # a clear error for unknown languages
        if instruct is not None and not isinstance(instruct, str):
            raise ValueError(f"instruct must be a str, got {type(instruct).__name__}")
        if kind == "base":
            if voice is None:
                raise ValueError("a voice prompt is required (Base models clone a voice): "
                                 "voice=tts.create_voice_prompt(ref_audio, ref_text)")
            if speaker is not None:
                raise ValueError(f"speaker={speaker!r}: preset speakers are for CustomVoice models; this Base "
                                 "model clones the voice of a voice prompt")
            if instruct:
                raise ValueError("instruct is for CustomVoice (1.7B) and VoiceDesign models; Base models take "
                                 "a voice prompt")
        elif voice is not None:
            raise ValueError(f"a voice prompt is for Base models; this {kind} model takes "
                             + ("speaker= (and instruct=)" if kind == "custom_voice" else "instruct="))
        if kind == "custom_voice":
            if speaker is None:
                raise ValueError(f"a speaker is required: one of {list(t.speakers)} (speaker='' for none, "
                                 "as the reference allows)")
            if speaker:
                t.speaker_codec_id(speaker)  # lists the valid ones
        elif kind == "voice_design" and speaker is not None:
            raise ValueError(f"speaker={speaker!r}: VoiceDesign models have no preset speakers; describe the voice "
                             "with instruct=")
        if voice is not None:
            if voice.speaker_embedding.shape != (t.hidden_size,):
                raise ValueError(f"voice speaker_embedding has shape {voice.speaker_embedding.shape}, this model "
                                 f"needs ({t.hidden_size},): was it made with another model?")
            if voice.ref_codes is not None:
                check_ref_codes(self.config, voice.ref_codes)

    def layout(self, text: str, voice: VoicePrompt | None = None, language: str = "auto",
               non_streaming_text: bool | None = None, *, speaker: str | None = None,
               instruct: str | None = None) -> PromptLayout:
        """The prompt of one request (`check` first); `non_streaming_text=None` takes the model's
        default. A clear ValueError for anything this model cannot take, or text the tokenizer
        cannot take."""
        self.check(voice, language, speaker, instruct)
        return self.layout_of_ids(self.tokenizer.text_ids(text), voice, language, non_streaming_text,
                                  speaker=speaker, instruct=instruct)

    def layout_of_ids(self, text_ids: list[int], voice: VoicePrompt | None = None, language: str = "auto",
                      non_streaming_text: bool | None = None, *, speaker: str | None = None,
                      instruct: str | None = None, text_open: bool = False) -> PromptLayout | None:
        """`layout` from the target text's ids (`TextTokenizer.text_ids`), checked by the caller.

        `text_open`: the ids so far of a text still being written (`text_stream.TextStream`),
        in the streaming-text layout. The prompt is then the whole text's, and `trailing_ids`
        the start of the whole text's trailing ids, without the text's EOS (it comes when the
        text ends): or None while the prompt still needs ids that have not arrived (one id for
        x-vector voices, preset speakers and designed voices; an ICL clone's prompt holds
        `1 + ref frames - ref text ids` target ids)."""
        if non_streaming_text is None:
            non_streaming_text = self.default_non_streaming_text()
        if text_open and non_streaming_text:
            raise ValueError("text that arrives while speaking needs the streaming-text layout "
                             "(non_streaming_text=False): the non-streaming one puts all text in the prompt")
        t = self.config.talker
        if instruct and not self.supports_instruct:
            if not self._warned_instruct:
                log.warning("instruct ignored: this %s model (size %s) does not take instructions, as in the "
                            "reference", self.model_type, self.config.tts_model_size)
                self._warned_instruct = True
            instruct = None
        instruct_ids = self.tokenizer.instruct_ids(instruct) if instruct else None
        if voice is not None:
            spk = XVECTOR
        else:
            spk = t.speaker_codec_id(speaker) if speaker else None
        icl = voice is not None and voice.ref_codes is not None
        ref_text_ids = self.tokenizer.ref_text_ids(voice.ref_text) if icl else None
        if text_open:
            needed = 1 + len(voice.ref_codes) - len(ref_text_ids) if icl else 1
            if len(text_ids) < max(needed, 1):
                return None
        layout = build_layout(self.config, self.role_ids, list(text_ids), language=language,
                              ref_text_ids=ref_text_ids, num_ref_frames=len(voice.ref_codes) if icl else None,
                              non_streaming_text=non_streaming_text, speaker=spk,
                              dialect=t.dialect_of(speaker) if speaker else None, instruct_ids=instruct_ids)
        if text_open:  # the EOS build_layout ends the trailing text with comes at the text's end
            assert layout.trailing_ids[-1] == self.config.tts_eos_token_id
            layout = dataclasses.replace(layout, trailing_ids=layout.trailing_ids[:-1])
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
    languages = dict(t.codec_language_id)
    for name, dialect in t.spk_is_dialect:
        if dialect and dialect not in languages:
            problems.append(f"config.json talker_config.spk_is_dialect[{name!r}] = {dialect!r} is not a "
                            "codec_language_id name")
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
    vecs = nnx.merge(talker_def, talker_state).embed_text_blocked(ids)[:rows]
    return jnp.pad(vecs, ((0, rows - vecs.shape[0]), (0, 0)))


def embed_text_ids(talker_def, talker_state, ids: np.ndarray, rows: int) -> jax.Array:
    """P(ids) padded with zero rows to `[rows, H]` (the trailing-text buffer of a row).

    Only a bucket of ids (`buckets.text_ids`) goes through the text projection (a 2-layer MLP
    as wide as the text embedding): projecting the whole buffer would cost more than the
    prefill. The projection runs in fixed blocks (`Talker.embed_text_blocked`), so the vectors
    equal those of text appended later in other groupings, bit for bit.
    """
    if len(ids) > rows:
        raise ValueError(f"{len(ids)} text ids do not fit {rows} rows")
    padded = np.zeros((buckets.text_ids(len(ids)),), np.int32)
    padded[:len(ids)] = ids
    return _embed_text(talker_def, talker_state, padded, rows)


def check_ids_of(folder: Path) -> None:
    """ValueError (or FileNotFoundError), naming the folder and the id, unless its model type is
    known and every id its config and tokenizer give a prompt fits the tables it indexes
    (`check_ids`); read from the files alone, so it runs before any weight is loaded or converted."""
    PromptBuilder(Qwen3TTSConfig.from_dir(folder), TextTokenizer.from_dir(folder), source=str(folder))
