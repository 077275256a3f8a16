"""Random-weight reference checkpoints in the real Hugging Face layout (tests only: needs torch).

`build_checkpoint(dst, preset, seed)` builds `Qwen3TTSForConditionalGeneration` and
`Qwen3TTSTokenizerV2Model` with the reference package (`qwen-tts`), randomizes the parts
whose default init is degenerate, and writes what an official folder holds:
`config.json`, `generation_config.json`, `preprocessor_config.json`, tokenizer files,
`model.safetensors`, `speech_tokenizer/{config.json, preprocessor_config.json, model.safetensors}`.

Configs start from the released 0.6B-Base files (convert/assets/hf-configs) and shrink sizes
only: every real token id, codec id, language id, sample rate and frame rate is kept, so the
reference's `generate` and the wrapper run on these folders unchanged. The exception is
"tiny-own-ids": its own small tokenizer (`small_tokenizer.py`), a text embedding sized for it,
and codec control, language and vocabulary sizes moved, so that no id of the released files
is right for it.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

from qwen3tts_jax.convert.assets import HF_CONFIGS

BASE_06B = HF_CONFIGS / "Qwen3-TTS-12Hz-0.6B-Base"
BASE_17B = HF_CONFIGS / "Qwen3-TTS-12Hz-1.7B-Base"
CV_06B = HF_CONFIGS / "Qwen3-TTS-12Hz-0.6B-CustomVoice"
CV_17B = HF_CONFIGS / "Qwen3-TTS-12Hz-1.7B-CustomVoice"
VD_17B = HF_CONFIGS / "Qwen3-TTS-12Hz-1.7B-VoiceDesign"

_TINY_TALKER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, text_hidden_size=24)
_TINY_PREDICTOR = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16)
_TINY_SPEAKER = dict(enc_channels=[32, 32, 32, 32, 96], enc_attention_channels=16, enc_res2net_scale=4,
                     enc_se_channels=8)
_TINY_DECODER = dict(codebook_dim=32, hidden_size=32, latent_dim=64, head_dim=8, num_attention_heads=4,
                     num_key_value_heads=4, intermediate_size=64, num_hidden_layers=2, decoder_dim=64)
_TINY_ENCODER = dict(num_filters=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, head_dim=8, intermediate_size=64, codebook_dim=16,
                     vector_quantization_hidden_dimension=16, upsample_groups=32)

PRESETS: dict[str, dict] = {
    # talker GQA ratio 2, predictor as wide as the talker (no projection, like 0.6B)
    "tiny": dict(talker=_TINY_TALKER, predictor=_TINY_PREDICTOR, speaker=_TINY_SPEAKER, size="0b6"),
    # GQA ratio 4 in both stacks
    "tiny-gqa4": dict(talker={**_TINY_TALKER, "num_attention_heads": 8, "head_dim": 8},
                      predictor={**_TINY_PREDICTOR, "num_attention_heads": 8, "head_dim": 8},
                      speaker=_TINY_SPEAKER, size="0b6"),
    # talker wider than the predictor: small_to_mtp_projection is a real Linear (like 1.7B)
    "tiny-proj": dict(talker={**_TINY_TALKER, "hidden_size": 48, "intermediate_size": 96},
                      predictor=_TINY_PREDICTOR, speaker=_TINY_SPEAKER, size="1b7"),
    # the released sizes (benchmarks and key coverage)
    "real-0.6b": dict(talker={}, predictor={}, speaker={}, size=None, real=True),
    # every id its own: tokenizer, tts_* and role ids, codec control and language ids, vocab sizes
    "tiny-own-ids": dict(talker=_TINY_TALKER, predictor=_TINY_PREDICTOR, speaker=_TINY_SPEAKER, size="0b6",
                         own_ids=True),
    # the rest of the family, from their own released configs (speakers, dialects, model type, size):
    # CustomVoice 1.7B (instruct honoured; a projection into the predictor, like 1.7B) and 0.6B
    # (instruct dropped by the reference's wrapper), VoiceDesign 1.7B
    "tiny-cv": dict(talker={**_TINY_TALKER, "hidden_size": 48, "intermediate_size": 96},
                    predictor=_TINY_PREDICTOR, speaker={}, size="1b7", source=CV_17B),
    "tiny-cv-0b6": dict(talker=_TINY_TALKER, predictor=_TINY_PREDICTOR, speaker={}, size="0b6", source=CV_06B),
    "tiny-vd": dict(talker={**_TINY_TALKER, "hidden_size": 48, "intermediate_size": 96},
                    predictor=_TINY_PREDICTOR, speaker={}, size="1b7", source=VD_17B),
    "real-1.7b": dict(talker={}, predictor={}, speaker={}, size=None, real=True, source=BASE_17B),
    # the released CustomVoice and VoiceDesign sizes (key coverage on the meta device, benchmarks)
    "real-0.6b-cv": dict(talker={}, predictor={}, speaker={}, size=None, real=True, source=CV_06B),
    "real-1.7b-cv": dict(talker={}, predictor={}, speaker={}, size=None, real=True, source=CV_17B),
    "real-1.7b-vd": dict(talker={}, predictor={}, speaker={}, size=None, real=True, source=VD_17B),
}

# "tiny-own-ids": codec control ids moved up by this much, language ids by this much, and the
# talker's codec vocabulary (so its control range, vocab_size - 1024 onwards) shrunk.
_OWN_CONTROL_SHIFT, _OWN_LANGUAGE_SHIFT, _OWN_CODEC_VOCAB = 600, 100, 3000


def _own_ids(main: dict) -> None:
    """Point every id of `main` (config.json) at the small tokenizer and move the codec ids."""
    from tests.reference import small_tokenizer

    ids = small_tokenizer.ids()
    main.update(im_start_token_id=ids["<|im_start|>"], im_end_token_id=ids["<|im_end|>"],
                tts_pad_token_id=ids["<tts_pad>"], tts_bos_token_id=ids["<tts_text_bos>"],
                tts_eos_token_id=ids["<tts_text_eod>"], assistant_token_id=ids["assistant"])
    t = main["talker_config"]
    t["text_vocab_size"] = small_tokenizer.text_vocab_size()
    t["vocab_size"] = _OWN_CODEC_VOCAB
    for key in ("codec_pad_id", "codec_bos_id", "codec_eos_token_id", "codec_think_id", "codec_nothink_id",
                "codec_think_bos_id", "codec_think_eos_id"):
        t[key] += _OWN_CONTROL_SHIFT
    t["codec_language_id"] = {k: v + _OWN_LANGUAGE_SHIFT for k, v in t["codec_language_id"].items()}


def hf_configs(preset: str) -> tuple[dict, dict]:
    """(`config.json`, `speech_tokenizer/config.json`) dicts of a preset."""
    spec = PRESETS[preset]
    source = spec.get("source", BASE_06B)
    main = json.loads((source / "config.json").read_text())
    tok = json.loads((source / "speech_tokenizer" / "config.json").read_text())
    if spec.get("real"):
        return main, tok
    main = copy.deepcopy(main)
    main["talker_config"].update(spec["talker"])
    main["talker_config"]["code_predictor_config"].update(spec["predictor"])
    if "speaker_encoder_config" in main:  # Base only
        main["speaker_encoder_config"].update(spec["speaker"], enc_dim=main["talker_config"]["hidden_size"])
    main["tts_model_size"] = spec["size"]
    tok["decoder_config"].update(_TINY_DECODER)
    tok["encoder_config"].update(_TINY_ENCODER)
    if spec.get("own_ids"):
        _own_ids(main)
    return main, tok


def reference_configs(main: dict, tok: dict):
    """The reference package's config objects for the given dicts."""
    from qwen_tts.core.models.configuration_qwen3_tts import Qwen3TTSConfig
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config

    return Qwen3TTSConfig(**main), Qwen3TTSTokenizerV2Config(**tok)


def build_reference_models(preset: str, seed: int):
    """(model, speech_tokenizer_model, config dict, tokenizer config dict), random and seeded."""
    import torch
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    main, tok = hf_configs(preset)
    cfg, tok_cfg = reference_configs(main, tok)
    torch.manual_seed(seed)
    model = Qwen3TTSForConditionalGeneration(cfg).eval()
    speech = Qwen3TTSTokenizerV2Model(tok_cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        _randomize(model, gen)
        _randomize(speech, gen)
    return model, speech, main, tok


def _randomize(module, gen) -> None:
    """Make the parts whose default init is degenerate meaningful for parity tests.

    Constant tensors (norm weights, layer scales, Snake alpha/beta) get noise, so a swapped
    or ignored weight shows up; codebooks (zero at init) become random with positive usage;
    the codec decoder's convs and linears are rescaled to `0.75 N(0,1) / sqrt(fan_in)` so its
    output neither vanishes (~1e-8 with the default init) nor clips.
    """
    import torch
    from torch import nn

    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, p in tensors:  # codebooks first: the decoder keeps them as parameters, Mimi as buffers
        if name.endswith("cluster_usage"):
            p.copy_(0.5 + torch.rand(p.shape, generator=gen) * 1.5)
        elif name.endswith(("embed_sum", "embedding_sum")):
            p.copy_(torch.randn(p.shape, generator=gen))
        elif p.is_floating_point() and p.numel() > 1 and float(p.detach().std()) == 0.0:
            base = float(p.detach().flatten()[0])
            p.add_(0.1 * max(abs(base), 0.1) * torch.randn(p.shape, generator=gen))
    for name, m in module.named_modules():
        if not name.startswith("decoder."):
            continue
        if isinstance(m, nn.ConvTranspose1d):
            fan_in = m.in_channels * m.kernel_size[0] / m.stride[0]
        elif isinstance(m, nn.Conv1d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0]
        elif isinstance(m, nn.Linear):
            fan_in = m.in_features
        else:
            continue
        m.weight.copy_(0.75 * torch.randn(m.weight.shape, generator=gen) / math.sqrt(fan_in))


def state_dict_numpy(module, prefix: str = "") -> dict:
    """`prefix + key -> float32/int numpy` of a reference module's persistent state."""
    return {prefix + k: v.detach().float().numpy() if v.is_floating_point() else v.detach().numpy()
            for k, v in module.state_dict().items()}


def build_checkpoint(dst: str | Path, preset: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """Write a random-weight reference checkpoint folder in the real layout; returns `dst`."""
    import torch
    from safetensors.torch import save_file

    dst = Path(dst)
    model, speech, main, tok = build_reference_models(preset, seed)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    (dst / "speech_tokenizer").mkdir(parents=True, exist_ok=True)
    main_sd = {k: v.to(torch_dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(main_sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    # The speech tokenizer stays float32, as released.
    speech_sd = {k: v.contiguous() for k, v in speech.state_dict().items()}
    save_file(speech_sd, str(dst / "speech_tokenizer" / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(main, indent=2))
    (dst / "speech_tokenizer" / "config.json").write_text(json.dumps(tok, indent=2))
    for name in ("generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
                 "vocab.json", "merges.txt"):
        shutil.copyfile(BASE_06B / name, dst / name)
    if PRESETS[preset].get("own_ids"):
        from tests.reference import small_tokenizer

        small_tokenizer.write(dst)
    shutil.copyfile(BASE_06B / "speech_tokenizer" / "preprocessor_config.json",
                 dst / "speech_tokenizer" / "preprocessor_config.json")
    return dst


def load_reference(path: str | Path):
    """The reference wrapper (`Qwen3TTSModel`) loaded from a checkpoint folder, float32 on CPU."""
    import torch
    from qwen_tts import Qwen3TTSModel

    return Qwen3TTSModel.from_pretrained(str(path), dtype=torch.float32, device_map="cpu")


def meta_state_shapes(main: dict, tok: dict) -> dict[str, tuple[int, ...]]:
    """Namespaced key -> shape of the reference models at a config, built on the meta device."""
    import torch
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    cfg, tok_cfg = reference_configs(main, tok)
    with torch.device("meta"):
        model = Qwen3TTSForConditionalGeneration(cfg)
        speech = Qwen3TTSTokenizerV2Model(tok_cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes.update({"speech_tokenizer." + k: tuple(v.shape) for k, v in speech.state_dict().items()})
    return shapes
