"""Model sources and tokenizer fix-ups."""

import json

import pytest
from conftest import QUICKSTART_DATA

from rlft.config import ModelSource
from rlft.errors import ConfigError
from rlft.models.chat_template import DEFAULT_CHAT_TEMPLATE
from rlft.models.loading import load_causal_lm, load_tokenizer, resolve_source
from rlft.models.tiny import build_tiny_from_texts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()[:200]
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("m") / "tiny", hidden_size=32, num_layers=1, num_heads=2
    )


def resolve(source, tmp_path, **kw):
    return resolve_source(
        ModelSource.model_validate(source),
        model_paths=kw.get("paths", {}),
        run_dir=tmp_path,
        base_dir=tmp_path,
    )


def test_tokenizer_fixups_are_applied_and_reported(tiny, tmp_path, caplog):
    from transformers import AutoTokenizer

    bare = tmp_path / "bare"
    tok = AutoTokenizer.from_pretrained(tiny)
    tok.pad_token = None
    tok.chat_template = None
    tok.save_pretrained(bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    fixed, fixups = load_tokenizer(resolve({"path": str(bare)}, tmp_path))
    logged = [f"{r.levelname} {r.getMessage()}" for r in caplog.records if r.name.startswith("rlft")]
    assert fixed.pad_token == fixed.eos_token == "<|end|>"
    assert fixed.chat_template == DEFAULT_CHAT_TEMPLATE
    assert len(fixups) == 2 and all(f in " ".join(logged) for f in fixups)
    assert all(line.startswith("WARNING tokenizer fix-up") for line in logged)


def test_complete_tokenizer_needs_no_fixups(tiny, tmp_path):
    _, fixups = load_tokenizer(resolve({"path": str(tiny)}, tmp_path), log=lambda m: None)
    assert fixups == []


def test_from_stage_resolves_to_its_artifact(tiny, tmp_path):
    resolved = resolve({"from": "sft"}, tmp_path, paths={"sft": str(tiny)})
    assert resolved.name_or_path == str(tiny)
    with pytest.raises(ConfigError, match="stage 'rm' has no finished artifact"):
        resolve({"from": "rm"}, tmp_path)


def test_trust_remote_code_is_off_unless_set(tiny, tmp_path):
    assert resolve({"path": str(tiny)}, tmp_path).kwargs["trust_remote_code"] is False
    assert (
        resolve({"path": str(tiny), "trust_remote_code": True}, tmp_path).kwargs["trust_remote_code"] is True
    )


def test_missing_sources_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="model.path: .*nope does not exist"):
        resolve({"path": "./nope"}, tmp_path)
    with pytest.raises(ConfigError, match="package 'no_such_pkg_xyz' is not installed; install it"):
        resolve({"package": "no_such_pkg_xyz"}, tmp_path)


def test_tiny_source_is_built_once_and_loads(tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text(
        "".join((QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines(keepends=True)[:100])
    )
    source = {
        "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "tokenizer_texts": ["texts.jsonl"]}
    }
    first = resolve(source, tmp_path)
    mtime = (tmp_path / first.name_or_path / "model.safetensors").stat().st_mtime
    again = resolve(source, tmp_path)
    assert again.name_or_path == first.name_or_path
    assert (tmp_path / again.name_or_path / "model.safetensors").stat().st_mtime == mtime
    tokenizer, _ = load_tokenizer(first, log=lambda m: None)
    model = load_causal_lm(first, tokenizer=tokenizer)
    assert model.config.hidden_size == 32 and model.config.pad_token_id == tokenizer.pad_token_id
    assert json.loads((tmp_path / first.name_or_path / "config.json").read_text())["num_hidden_layers"] == 1


def test_local_folder_named_like_a_hub_model_is_used(tiny, tmp_path):
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "model").symlink_to(tiny)
    resolved = resolve("org/model", tmp_path)
    assert resolved.name_or_path.endswith("tiny")


def test_weights_bytes_reads_the_headers_of_a_saved_model(tiny):
    from safetensors import safe_open

    from rlft.models.loading import model_memory_problem, weights_bytes

    with safe_open(str(tiny / "model.safetensors"), framework="pt") as f:
        count = sum(f.get_tensor(k).numel() for k in f.keys())
    assert count > 0 and weights_bytes(tiny, "float32") == 4 * count
    assert weights_bytes(tiny, "bfloat16") == 2 * count
    assert model_memory_problem(tiny, "float32") is None  # a tiny model fits anywhere
