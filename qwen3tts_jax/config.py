"""Frozen, hashable configs for every Qwen3-TTS component, built from the HF config files.

Each dataclass mirrors one reference config class. Only fields the JAX code reads are kept;
the class defaults are the *reference class* defaults, and `from_hf_config` honours every
value the released `config.json` carries (explicit head_dim, real codec ids, rope_theta 1e6).
Configs are hashable so they can be static arguments of jitted functions.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

LANGUAGES_12HZ = (
    "chinese", "english", "german", "italian", "portuguese",
    "spanish", "japanese", "korean", "french", "russian",
)


def _pick(cls, hf: dict[str, Any], **renames: str) -> dict[str, Any]:
    """Keep the keys of `hf` that are fields of `cls` (after renaming `ours=theirs`)."""
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for name in names:
        src = renames.get(name, name)
        if src in hf and hf[src] is not None:
            out[name] = hf[src]
    return out


def _freeze(value):
    """Lists become tuples and dicts become sorted item tuples, so configs hash."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _build(cls, kwargs: dict[str, Any]):
    return cls(**{k: _freeze(v) for k, v in kwargs.items()})


@dataclasses.dataclass(frozen=True)
class CodePredictorConfig:
    """The multi-token predictor (MTP) that expands c0 into codebooks 1..15."""

    vocab_size: int = 2048
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 5
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    num_code_groups: int = 32
    # Width of the codec embeddings and of the incoming talker hidden state.
    talker_hidden_size: int = 1024

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], talker_hidden_size: int) -> CodePredictorConfig:
        _check_activation(hf, "code_predictor")
        return _build(cls, {**_pick(cls, hf), "talker_hidden_size": talker_hidden_size})

    @property
    def has_projection(self) -> bool:
        """`small_to_mtp_projection` is a Linear only when the widths differ (1.7B)."""
        return self.hidden_size != self.talker_hidden_size


@dataclasses.dataclass(frozen=True)
class TalkerConfig:
    """The 28-layer talker that predicts codebook 0 from summed text + codec tracks."""

    vocab_size: int = 3072
    hidden_size: int = 1024
    intermediate_size: int = 2048
    num_hidden_layers: int = 20
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    head_dim: int = 64
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    num_code_groups: int = 32
    text_hidden_size: int = 2048
    text_vocab_size: int = 151936
    codec_pad_id: int = 4196
    codec_bos_id: int = 4197
    codec_eos_token_id: int = 4198
    codec_think_id: int = 4202
    codec_nothink_id: int = 4203
    codec_think_bos_id: int = 4204
    codec_think_eos_id: int = 4205
    # Sorted (name, id) pairs; use `language_id(name)`.
    codec_language_id: tuple[tuple[str, int], ...] = ()
    # CustomVoice preset speakers: (name, codec id) and (name, False or the dialect they speak).
    spk_id: tuple[tuple[str, int], ...] = ()
    spk_is_dialect: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> TalkerConfig:
        _check_activation(hf, "talker")
        kwargs = _pick(cls, hf)
        # head_dim arrives through kwargs in the reference; hidden/heads is the fallback there.
        kwargs.setdefault("head_dim", hf.get("hidden_size", cls.hidden_size) // hf.get(
            "num_attention_heads", cls.num_attention_heads))
        return _build(cls, kwargs)

    def language_id(self, name: str) -> int:
        table = dict(self.codec_language_id)
        try:
            return table[name.lower()]
        except KeyError:
            raise ValueError(
                f"unsupported language {name!r}; choose 'auto' or one of {sorted(table)}") from None

    @property
    def languages(self) -> tuple[str, ...]:
        """Every name of `codec_language_id`, dialects included (see `spoken_languages`)."""
        return tuple(name for name, _ in self.codec_language_id)

    @property
    def spoken_languages(self) -> tuple[str, ...]:
        """The languages a request may name: dialects are reached only through a dialect
        speaker (the reference's supported list drops every name with "dialect")."""
        return tuple(name for name in self.languages if "dialect" not in name)

    @property
    def speakers(self) -> tuple[str, ...]:
        """Preset speaker names (CustomVoice), sorted; empty for Base and VoiceDesign."""
        return tuple(name for name, _ in self.spk_id)

    def speaker_codec_id(self, name: str) -> int:
        """The codec-embedding row of preset speaker `name` (case-insensitive)."""
        table = dict(self.spk_id)
        try:
            return table[name.lower()]
        except KeyError:
            raise ValueError(f"unknown speaker {name!r}; this model's speakers are {list(self.speakers)}") from None

    def dialect_of(self, name: str) -> str | None:
        """The dialect preset speaker `name` speaks (a `codec_language_id` key), or None."""
        dialect = dict(self.spk_is_dialect).get(name.lower(), False)
        return dialect or None


@dataclasses.dataclass(frozen=True)
class SpeakerEncoderConfig:
    """ECAPA-TDNN style x-vector extractor (Base models only)."""

    mel_dim: int = 128
    enc_dim: int = 1024
    enc_channels: tuple[int, ...] = (512, 512, 512, 512, 1536)
    enc_kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    enc_dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    enc_attention_channels: int = 128
    enc_res2net_scale: int = 8
    enc_se_channels: int = 128
    sample_rate: int = 24000

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> SpeakerEncoderConfig:
        return _build(cls, _pick(cls, hf))


@dataclasses.dataclass(frozen=True)
class CodecDecoderConfig:
    """The 12 Hz speech tokenizer's decoder: RVQ -> transformer -> upsampling convs -> PCM."""

    codebook_size: int = 2048
    codebook_dim: int = 512
    hidden_size: int = 1024
    latent_dim: int = 1024
    head_dim: int = 64
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    intermediate_size: int = 3072
    num_hidden_layers: int = 8
    sliding_window: int = 72
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    layer_scale_initial_scale: float = 0.01
    num_quantizers: int = 16
    upsample_rates: tuple[int, ...] = (8, 5, 4, 3)
    upsampling_ratios: tuple[int, ...] = (2, 2)
    decoder_dim: int = 1536

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> CodecDecoderConfig:
        _check_activation(hf, "codec decoder")
        kwargs = _pick(cls, hf)
        kwargs.setdefault("head_dim", hf.get("hidden_size", cls.hidden_size) // hf.get(
            "num_attention_heads", cls.num_attention_heads))
        return _build(cls, kwargs)

    @property
    def samples_per_frame(self) -> int:
        total = 1
        for r in (*self.upsample_rates, *self.upsampling_ratios):
            total *= r
        return total


@dataclasses.dataclass(frozen=True)
class CodecEncoderConfig:
    """The Mimi encoder used to turn reference audio into codes for voice cloning."""

    sampling_rate: int = 24000
    audio_channels: int = 1
    num_filters: int = 64
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    num_residual_layers: int = 1
    compress: int = 2
    upsampling_ratios: tuple[int, ...] = (8, 6, 5, 4)
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 8
    head_dim: int = 64
    intermediate_size: int = 2048
    norm_eps: float = 1e-5
    layer_scale_initial_scale: float = 0.01
    rope_theta: float = 10000.0
    num_quantizers: int = 32
    num_semantic_quantizers: int = 1
    codebook_size: int = 2048
    codebook_dim: int = 256
    vector_quantization_hidden_dimension: int = 256
    frame_rate: float = 12.5
    # How many of the quantizers' codes the speech tokenizer keeps (speech_tokenizer config).
    valid_num_quantizers: int = 16

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], valid_num_quantizers: int = 16) -> CodecEncoderConfig:
        act = hf.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"codec encoder: unsupported hidden_act {act!r} (only 'gelu')")
        if not hf.get("use_causal_conv", True):
            raise ValueError("codec encoder: only causal convolutions are supported")
        for key, want in (("pad_mode", "constant"), ("use_conv_shortcut", False),
                          ("attention_bias", False), ("audio_channels", 1)):
            if hf.get(key, want) != want:
                raise ValueError(f"codec encoder: unsupported {key}={hf[key]!r} (only {want!r})")
        kwargs = _pick(cls, hf, frame_rate="_frame_rate")
        if "frame_rate" not in kwargs:  # MimiConfig.frame_rate: sampling_rate / (hop * 2)
            hop = math.prod(hf.get("upsampling_ratios", cls.upsampling_ratios))
            kwargs["frame_rate"] = hf.get("sampling_rate", cls.sampling_rate) / (hop * 2)
        kwargs.setdefault("head_dim", hf.get("hidden_size", cls.hidden_size) // hf.get(
            "num_attention_heads", cls.num_attention_heads))
        kwargs["valid_num_quantizers"] = valid_num_quantizers
        return _build(cls, kwargs)

    @property
    def hop_length(self) -> int:
        total = 1
        for r in self.upsampling_ratios:
            total *= r
        return total


@dataclasses.dataclass(frozen=True)
class SpeechTokenizerConfig:
    decoder: CodecDecoderConfig
    encoder: CodecEncoderConfig
    input_sample_rate: int = 24000
    output_sample_rate: int = 24000
    decode_upsample_rate: int = 1920
    encode_downsample_rate: int = 1920

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> SpeechTokenizerConfig:
        model_type = hf.get("model_type")
        if model_type != "qwen3_tts_tokenizer_12hz":
            raise ValueError(
                f"speech tokenizer model_type is {model_type!r}; only the 12 Hz tokenizer "
                "('qwen3_tts_tokenizer_12hz') is supported")
        valid = hf.get("encoder_valid_num_quantizers", 16)
        return cls(
            decoder=CodecDecoderConfig.from_hf_config(hf.get("decoder_config") or {}),
            encoder=CodecEncoderConfig.from_hf_config(hf.get("encoder_config") or {}, valid),
            **_pick(cls, hf),
        )


@dataclasses.dataclass(frozen=True)
class Qwen3TTSConfig:
    """The whole model: `config.json` plus `speech_tokenizer/config.json`."""

    talker: TalkerConfig
    code_predictor: CodePredictorConfig
    speaker_encoder: SpeakerEncoderConfig | None
    speech_tokenizer: SpeechTokenizerConfig | None
    tts_model_type: str = "base"
    tts_model_size: str | None = None
    im_start_token_id: int = 151644
    im_end_token_id: int = 151645
    tts_pad_token_id: int = 151671
    tts_bos_token_id: int = 151672
    tts_eos_token_id: int = 151673

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any],
                       speech_tokenizer: dict[str, Any] | None = None) -> Qwen3TTSConfig:
        if hf.get("model_type") not in (None, "qwen3_tts"):
            raise ValueError(f"config.json model_type is {hf.get('model_type')!r}, expected 'qwen3_tts'")
        tokenizer_type = hf.get("tokenizer_type")
        if tokenizer_type not in (None, "qwen3_tts_tokenizer_12hz"):
            raise ValueError(f"tokenizer_type {tokenizer_type!r}: only the 12 Hz family is supported")
        talker_hf = hf.get("talker_config") or {}
        talker = TalkerConfig.from_hf_config(talker_hf)
        predictor = CodePredictorConfig.from_hf_config(
            talker_hf.get("code_predictor_config") or {}, talker_hidden_size=talker.hidden_size)
        model_type = hf.get("tts_model_type") or "base"
        # The reference builds the speaker encoder only for Base checkpoints.
        speaker = (SpeakerEncoderConfig.from_hf_config(hf.get("speaker_encoder_config") or {})
                   if model_type == "base" else None)
        if speaker is not None and speaker.enc_dim != talker.hidden_size:
            raise ValueError(
                f"speaker encoder enc_dim {speaker.enc_dim} must equal the talker hidden size "
                f"{talker.hidden_size}: the x-vector is inserted as a codec-track row")
        return cls(
            talker=talker,
            code_predictor=predictor,
            speaker_encoder=speaker,
            speech_tokenizer=(SpeechTokenizerConfig.from_hf_config(speech_tokenizer)
                              if speech_tokenizer is not None else None),
            tts_model_type=model_type,
            **{k: hf[k] for k in _TOP_LEVEL_SCALARS if hf.get(k) is not None},
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Qwen3TTSConfig:
        """Read `config.json` and, when present, `speech_tokenizer/config.json`."""
        path = Path(path)
        main = _read_json(path / "config.json")
        tok_path = path / "speech_tokenizer" / "config.json"
        return cls.from_hf_config(main, _read_json(tok_path) if tok_path.exists() else None)


_TOP_LEVEL_SCALARS = ("tts_model_size", "im_start_token_id", "im_end_token_id",
                      "tts_pad_token_id", "tts_bos_token_id", "tts_eos_token_id")


def _check_activation(hf: dict[str, Any], what: str) -> None:
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{what}: unsupported hidden_act {act!r} (only 'silu')")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"missing config file: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
