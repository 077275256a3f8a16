"""The converter: strict table, key coverage at the real sizes, bad input, atomic output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from qwen3tts_jax.convert import ConversionError, convert_checkpoint
from qwen3tts_jax.convert.converter import abstract_targets, plan
from qwen3tts_jax.convert.safetensors_reader import SafetensorsFile, write_safetensors

from qwen3tts_jax.config import Qwen3TTSConfig
from tests.reference.checkpoints import BASE_06B, BASE_17B, CV_06B, CV_17B, VD_17B, hf_configs, meta_state_shapes

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("folder", [BASE_06B, BASE_17B], ids=["0.6B-Base", "1.7B-Base"])
def test_table_covers_every_key_of_the_real_sizes(folder):
    """Reference models built on the meta device at the released configs: every key maps,
    every Flax parameter is filled, every shape matches (no allocation either side)."""
    main = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "speech_tokenizer" / "config.json").read_text())
    shapes = meta_state_shapes(main, tok)
    cfg = Qwen3TTSConfig.from_hf_config(main, tok)
    assignments = plan(shapes, abstract_targets(cfg, "bfloat16"))
    mapped = {a.component for a in assignments.values()}
    assert mapped == {"talker", "code_predictor", "speaker_encoder", "codec_decoder", "codec_encoder"}
    has_projection = any("small_to_mtp_projection" in k for k in assignments)
    assert has_projection == (folder == BASE_17B)


@pytest.mark.parametrize("folder,keys", [(CV_06B, 402), (CV_17B, 404), (VD_17B, 404)],
                         ids=["0.6B-CustomVoice", "1.7B-CustomVoice", "1.7B-VoiceDesign"])
def test_table_covers_every_key_of_the_custom_voice_and_voice_design_sizes(folder, keys):
    """The released CustomVoice and VoiceDesign configs on the meta device: the main weights
    have no speaker encoder (402 / 404 keys, MODEL-FAMILY 1); the speech tokenizer's Mimi
    encoder is in the files but skipped, since nothing of these models encodes audio."""
    from qwen3tts_jax import components

    main = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "speech_tokenizer" / "config.json").read_text())
    shapes = meta_state_shapes(main, tok)
    assert sum(1 for k in shapes if not k.startswith("speech_tokenizer.")) == keys
    assert not any(k.startswith("speaker_encoder.") for k in shapes)
    cfg = Qwen3TTSConfig.from_hf_config(main, tok)
    assert components.present(cfg) == ["talker", "code_predictor", "codec_decoder"]
    assignments = plan(shapes, abstract_targets(cfg, "bfloat16"), unused=components.unused(cfg))
    assert {a.component for a in assignments.values()} == {"talker", "code_predictor", "codec_decoder"}
    assert any("small_to_mtp_projection" in k for k in assignments) == (folder != CV_06B)
    with pytest.raises(ConversionError, match="codec_encoder"):  # not skipped unless asked
        plan(shapes, abstract_targets(cfg, "bfloat16"))


def test_full_size_modules_have_abstract_shapes():
    """jax.eval_shape of the full-size modules (nothing allocated) and their parameter counts."""
    cfg = Qwen3TTSConfig.from_dir(BASE_06B)
    targets = abstract_targets(cfg, "bfloat16")
    counts = {name: sum(int(np.prod(v.shape)) for v in paths.values()) for name, paths in targets.items()}
    # REFERENCE-FACTS appendix: talker 440.47M + 311.16M + 6.29M + 3.15M + 3.15M, predictor 141.57M.
    assert counts["talker"] == pytest.approx(764.22e6, rel=1e-3)
    assert counts["code_predictor"] == pytest.approx(141.57e6, rel=1e-3)
    assert counts["speaker_encoder"] == pytest.approx(8.85e6, rel=1e-2)
    assert str(targets["talker"]["codec_head.weight"].dtype) == "bfloat16"
    assert str(targets["codec_decoder"][next(iter(targets["codec_decoder"]))].dtype) == "float32"


def test_conversion_writes_a_loadable_folder(tiny_checkpoint):
    hf, out = tiny_checkpoint
    manifest = json.loads((out / "qwen3tts_jax.json").read_text())
    assert manifest["dtype"] == "float32"
    assert set(manifest["components"]) == {"talker", "code_predictor", "speaker_encoder",
                                           "codec_decoder", "codec_encoder"}
    for name in ("config.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                 "speech_tokenizer/config.json", "speech_tokenizer/preprocessor_config.json"):
        assert (out / name).read_bytes() == (hf / name).read_bytes(), name
    assert not list(out.rglob("*.safetensors"))
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


def test_bfloat16_conversion_casts_the_language_model_only(tiny_checkpoint, tmp_path):
    import qwen3tts_jax

    hf, _ = tiny_checkpoint
    out = convert_checkpoint(hf, tmp_path / "bf16", dtype="bfloat16")
    loaded = qwen3tts_jax.load(out)
    assert str(loaded.talker.codec_head.weight.dtype) == "bfloat16"
    assert str(loaded.code_predictor.lm_head[0].weight.dtype) == "bfloat16"
    src = SafetensorsFile(hf / "model.safetensors")
    want = src.get("talker.codec_head.weight")
    np.testing.assert_array_equal(np.asarray(loaded.talker.codec_head.weight), want.astype("bfloat16"))
    for name in ("codec_decoder", "codec_encoder", "speaker_encoder"):
        leaves = [v for v in __import__("jax").tree.leaves(__import__("flax").nnx.state(loaded.modules[name]))]
        assert all(str(x.dtype) == "float32" for x in leaves), name


# ---------------------------------------------------------------------------------------
# Bad input: one clear error naming the file and key, non-zero exit, no output folder.


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwen3tts_jax.convert", *map(str, args), "--quiet"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.fixture
def broken(tiny_checkpoint, tmp_path):
    """A fresh copy of the tiny reference folder to damage."""
    hf, _ = tiny_checkpoint
    return Path(shutil.copytree(hf, tmp_path / "src"))


def _rewrite(path: Path, change) -> None:
    f = SafetensorsFile(path)
    tensors = {k: f.get(k) for k in f.shapes}
    f.close()
    change(tensors)
    write_safetensors(path, tensors)


def _expect_single_error(broken, tmp_path, *needles):
    dst = tmp_path / "out"
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(broken, dst)
    assert len(info.value.problems) == 1, info.value.problems
    for needle in needles:
        assert needle in info.value.problems[0]
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    result = _cli(broken, dst)
    assert result.returncode != 0
    for needle in needles:
        assert needle in result.stderr
    assert not dst.exists()


def test_missing_weights_file(broken, tmp_path):
    (broken / "model.safetensors").unlink()
    _expect_single_error(broken, tmp_path, "missing weights file", str(broken / "model.safetensors"))


def test_missing_config(broken, tmp_path):
    (broken / "config.json").unlink()
    _expect_single_error(broken, tmp_path, "missing config file", "config.json")


def test_truncated_safetensors(broken, tmp_path):
    path = broken / "speech_tokenizer" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_single_error(broken, tmp_path, "truncated", str(path))


def test_tensor_with_a_wrong_shape(broken, tmp_path):
    key = "talker.model.layers.1.self_attn.k_proj.weight"
    _rewrite(broken / "model.safetensors", lambda t: t.__setitem__(key, t[key][:-1]))
    _expect_single_error(broken, tmp_path, key, "model.safetensors", "shape")


def test_unknown_key(broken, tmp_path):
    key = "talker.model.layers.0.self_attn.rotary_extra"
    _rewrite(broken / "model.safetensors", lambda t: t.__setitem__(key, np.zeros(3, np.float32)))
    _expect_single_error(broken, tmp_path, "unmapped source key", key, "model.safetensors")


def test_missing_key_leaves_a_target_unfilled(broken, tmp_path):
    _rewrite(broken / "model.safetensors", lambda t: t.pop("talker.model.norm.weight"))
    _expect_single_error(broken, tmp_path, "talker.norm.weight", "not filled")


def test_ids_that_loading_refuses_are_refused_before_writing(broken, tmp_path):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["tts_bos_token_id"] = 999999  # past the text embedding table
    (broken / "config.json").write_text(json.dumps(cfg))
    _expect_single_error(broken, tmp_path, "index past their tables", "tts_bos_token_id")


def test_missing_tokenizer_file(broken, tmp_path):
    (broken / "vocab.json").unlink()
    _expect_single_error(broken, tmp_path, "vocab.json")


def test_overwrite_never_replaces_the_source_or_a_file(tiny_checkpoint, tmp_path):
    hf, _ = tiny_checkpoint
    with pytest.raises(ConversionError, match="delete the source checkpoint"):
        convert_checkpoint(hf, hf, overwrite=True)
    with pytest.raises(ConversionError, match="delete the source checkpoint"):
        convert_checkpoint(hf, hf.parent, overwrite=True)
    assert (hf / "model.safetensors").exists()
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    with pytest.raises(ConversionError, match="not a folder"):
        convert_checkpoint(hf, a_file, overwrite=True)
    assert a_file.read_text() == "x"


def test_all_problems_are_reported_at_once(broken, tmp_path):
    def damage(t):
        t["talker.extra_a"] = np.zeros(1, np.float32)
        t["talker.extra_b"] = np.zeros(1, np.float32)
        t.pop("talker.codec_head.weight")
    _rewrite(broken / "model.safetensors", damage)
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(broken, tmp_path / "out")
    assert len(info.value.problems) == 3


def test_existing_output_is_kept_unless_overwrite(tiny_checkpoint, tmp_path):
    hf, _ = tiny_checkpoint
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists"):
        convert_checkpoint(hf, dst)
    assert (dst / "keep.txt").exists()
    convert_checkpoint(hf, dst, dtype="float32", overwrite=True)
    assert not (dst / "keep.txt").exists() and (dst / "qwen3tts_jax.json").exists()


def test_cli_converts(tiny_checkpoint, tmp_path):
    hf, _ = tiny_checkpoint
    result = _cli(hf, tmp_path / "cli", "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli" / "qwen3tts_jax.json").exists()


def test_not_a_folder_nor_a_hub_id(tmp_path):
    with pytest.raises(ConversionError, match="no such folder"):
        convert_checkpoint(tmp_path / "nope", tmp_path / "out")


def test_reader_reads_bfloat16(tmp_path):
    import ml_dtypes

    a = np.arange(12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16)
    write_safetensors(tmp_path / "x.safetensors", {"a": a, "b": np.ones(2, np.int64)})
    f = SafetensorsFile(tmp_path / "x.safetensors")
    np.testing.assert_array_equal(f.get("a"), a)
    assert f.shapes == {"a": (3, 4), "b": (2,)}


def test_tiny_presets_shrink_sizes_only():
    main, tok = hf_configs("tiny")
    real = json.loads((BASE_06B / "config.json").read_text())
    for key in ("codec_bos_id", "codec_eos_token_id", "codec_language_id", "vocab_size", "text_vocab_size"):
        assert main["talker_config"][key] == real["talker_config"][key]


def test_hub_ids_go_through_snapshot_download(tiny_checkpoint, tmp_path, monkeypatch):
    """A hub id is fetched with huggingface_hub (patched here: tests never touch the network)."""
    import huggingface_hub

    hf, _ = tiny_checkpoint
    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id: asked.append(repo_id) or str(hf))
    convert_checkpoint("Qwen/Qwen3-TTS-12Hz-0.6B-Base", tmp_path / "hub", dtype="float32")
    assert asked == ["Qwen/Qwen3-TTS-12Hz-0.6B-Base"]
    assert (tmp_path / "hub" / "qwen3tts_jax.json").exists()
