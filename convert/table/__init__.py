"""The one conversion table: every source key of an official checkpoint, by component.

Source keys are namespaced by file: keys of `model.safetensors` as they are
(`talker.*`, `speaker_encoder.*`), keys of `speech_tokenizer/model.safetensors` prefixed
with `speech_tokenizer.` (`speech_tokenizer.decoder.*`, `speech_tokenizer.encoder.*`).
Targets are dotted paths whose first element is the component name.
"""

from qwen3tts_jax.convert.table import code_predictor, codec_decoder, codec_encoder, speaker_encoder, talker

SECTIONS = (talker, code_predictor, speaker_encoder, codec_decoder, codec_encoder)

RULES = tuple(rule for section in SECTIONS for rule in section.RULES)
IGNORED = tuple(ignore for section in SECTIONS for ignore in section.IGNORED)
