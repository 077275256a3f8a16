"""A small byte-level BPE of our own, in the released files' format, with ids unlike theirs.

The released Qwen tokenizer has 151,643 base tokens, `assistant` = 77091, `\\n` = 198 and the
control tokens at 151643..151675. A checkpoint with another tokenizer (a fine-tune, a smaller
vocabulary) has other ids for all of them; code that took any id from the released files
instead of the checkpoint's own would index past a table (NaN under jit) or embed the wrong
row. `small_tokenizer()` trains a ~1,000-token byte-level BPE on the project's multilingual
corpus (with `assistant` frequent enough to be one token, as the reference's 3-token role
slice needs) and appends the control tokens in a different order at different ids.
`write(dst)` writes `vocab.json`, `merges.txt` and `tokenizer_config.json` as released.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "tokenizer_corpus.json"
VOCAB_SIZE = 1000  # base tokens (bytes + merges)

# The control tokens, in an order unlike the released one (there: endoftext, im_start, im_end, ...).
CONTROL = ["<tts_pad>", "<tts_text_bos>", "<tts_text_eod>", "<|im_end|>", "<|endoftext|>", "<|im_start|>",
           "<tts_text_bos_single>"]


@functools.cache
def small_tokenizer() -> tuple[dict[str, int], list[str], dict[int, str]]:
    """(vocab, merges, added id -> content); deterministic."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    corpus = json.loads(DATA.read_text())
    corpus += ["<|im_start|>assistant\n" * 40, "Hello world, this is a parity test. Okay. Yeah."] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, min_frequency=1)
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    # Ids in reverse: the trainer puts the 256 bytes first in the released order, so "\\n" would
    # be 198 as released; reversed, no id of a byte or a merge is where the released files have it.
    vocab = {token: len(model["vocab"]) - 1 - i for token, i in model["vocab"].items()}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    added = {len(vocab) + i: content for i, content in enumerate(CONTROL)}
    return vocab, merges, added


def ids() -> dict[str, int]:
    """content -> id of the control tokens, and of `assistant` and `\\n` (Ċ)."""
    vocab, _, added = small_tokenizer()
    out = {content: i for i, content in added.items()}
    out.update(assistant=vocab["assistant"], newline=vocab["Ċ"])
    return out


def text_vocab_size() -> int:
    """A text embedding with some room past the tokenizer (as released: 151,936 > 151,676)."""
    vocab, _, added = small_tokenizer()
    return len(vocab) + len(added) + 24


def write(dst: Path) -> None:
    vocab, merges, added = small_tokenizer()
    (dst / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "add_bos_token": False, "add_prefix_space": False, "bos_token": None, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 131072, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
        "additional_special_tokens": [c for c in CONTROL if c != "<|endoftext|>"],
        "added_tokens_decoder": {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for i, c in added.items()},
    }
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
