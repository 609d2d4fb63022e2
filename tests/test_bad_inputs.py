"""A table of bad inputs: each runs the CLI in-process and must end in exit code 2 with one line (or one
short block) saying where the problem is and what to do, never a traceback.

A case is (id, command, text the error must hold). `setup(tmp_path)` writes the files a case needs:
a valid one-stage pipeline (`pipeline.yaml`, tiny model, quickstart data), data files and model folders;
a case then breaks one thing. `rlft validate` reads no data and loads no model, so config and model
cases are fast; data cases go through `rlft data inspect` (the same loader as a stage).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from conftest import QUICKSTART_DATA

from rlft.cli import main

TINY = {
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 2,
    "tokenizer_texts": [f"{QUICKSTART_DATA}/sft_train.jsonl"],
}
BASE = {
    "name": "t",
    "model": {"tiny": TINY},
    "stages": [
        {
            "name": "sft",
            "kind": "sft",
            "data": {"train": f"{QUICKSTART_DATA}/sft_train.jsonl"},
            "trainer": {"max_steps": 4},
        }
    ],
}
PROMPTS = f"{QUICKSTART_DATA}/heldout_prompts.jsonl"


def pipeline(tmp: Path, change=None, *, text: str | None = None) -> list[str]:
    """`rlft validate` on BASE after `change(raw)` (or on `text` as the file)."""
    path = tmp / "pipeline.yaml"
    if text is not None:
        path.write_text(text)
    else:
        raw = copy.deepcopy(BASE)
        if change:
            change(raw)
        path.write_text(yaml.safe_dump(raw))
    return ["validate", str(path)]


def stage(**keys):
    """A change that sets keys of the first stage (None removes one)."""

    def change(raw):
        for k, v in keys.items():
            if v is None:
                raw["stages"][0].pop(k, None)
            else:
                raw["stages"][0][k] = v

    return change


def trainer(**keys):
    return lambda raw: raw["stages"][0]["trainer"].update(keys)


def with_stage(extra: dict, *, first: bool = False):
    return lambda raw: raw["stages"].insert(0 if first else len(raw["stages"]), extra)


def ppo(reward) -> dict:
    return {
        "name": "ppo",
        "kind": "ppo",
        "model": {"from": "sft"},
        "data": {"train": PROMPTS},
        "steps": 1,
        "reward": reward,
    }


def model_folder(tmp: Path, *files: str) -> Path:
    folder = tmp / "model"
    folder.mkdir(exist_ok=True)
    for name in files:
        (folder / name).write_text("{}" if name.endswith(".json") else "x")
    return folder


def too_large(tmp: Path) -> list[str]:
    """A complete folder whose safetensors header declares 2^40 float32 weights (4 TiB): only the header
    is written, which is all the check reads."""
    import struct

    folder = model_folder(tmp, "config.json", "tokenizer.json")
    header = json.dumps({"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return pipeline(tmp, lambda raw: raw.update(model={"path": str(folder)}))


def model_case(*files: str, key: str = "model"):
    def make(tmp: Path) -> list[str]:
        folder = model_folder(tmp, *files)
        if key == "model":
            return pipeline(tmp, lambda raw: raw.update(model={"path": str(folder)}))
        dpo = {"name": "dpo", "kind": "dpo", "model": {"from": "sft"}, key: {"path": str(folder)}}
        dpo["data"] = {"train": f"{QUICKSTART_DATA}/prefs_train.jsonl"}
        return pipeline(tmp, with_stage(dpo))

    return make


def two_tokenizers(tmp: Path) -> dict:
    """A DPO stage whose policy and reference folders have different vocabularies."""
    for name, vocab in (("policy", {"a": 0, "b": 1}), ("ref", {"c": 0})):
        folder = tmp / name
        folder.mkdir()
        for f in ("config.json", "model.safetensors"):
            (folder / f).write_text("{}")
        (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab}}))
    data = {"train": f"{QUICKSTART_DATA}/prefs_train.jsonl"}
    return {
        "name": "dpo",
        "kind": "dpo",
        "model": {"path": "./policy"},
        "reference": {"path": "./ref"},
        "data": data,
    }


def inspect(name: str, content: bytes | str | None, *extra: str, fmt: str = "preference") -> callable:
    """`rlft data inspect FILE --format fmt` on a file with this content (None: make nothing; a dict of
    name -> content: a folder)."""

    def make(tmp: Path) -> list[str]:
        path = tmp / name
        if isinstance(content, dict):
            path.mkdir()
            for n, c in content.items():
                (path / n).write_text(c)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
        return ["data", "inspect", str(path), "--format", fmt, "--out", str(tmp / "rep"), *extra]

    return make


def lines(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


GOOD = {"prompt": "p", "chosen": "c", "rejected": "r"}

CASES = [
    # --- pipeline config -------------------------------------------------------------------
    (
        "unknown top-level key",
        lambda t: pipeline(t, lambda r: r.update(nmae="x")),
        "nmae: unknown key; did you mean name?",
    ),
    (
        "unknown stage key",
        lambda t: pipeline(t, stage(trainr={})),
        "stages[0].trainr: unknown key; did you mean trainer?",
    ),
    (
        "unknown trainer key",
        lambda t: pipeline(t, trainer(learning_rte=1e-3)),
        "stages[0].trainer.learning_rte: unknown key for SFTConfig; did you mean learning_rate?",
    ),
    (
        "learning rate as a word",
        lambda t: pipeline(t, trainer(learning_rate="fast")),
        "stages[0].trainer.learning_rate: must be a number, got the text 'fast'",
    ),
    (
        "learning rate quoted",
        lambda t: pipeline(t, text=yaml.safe_dump(BASE).replace("max_steps: 4", "learning_rate: '3e-4'")),
        "learning_rate: must be a number, got the text '3e-4' (write numbers without quotes)",
    ),
    (
        "learning rate negative",
        lambda t: pipeline(t, trainer(learning_rate=-0.1)),
        "learning_rate: must be a positive number",
    ),
    (
        "max_steps negative",
        lambda t: pipeline(t, trainer(max_steps=-5)),
        "stages[0].trainer.max_steps: must be a positive number of steps, or -1 to train for num_train_epochs, got -5",
    ),
    (
        "max_steps fractional",
        lambda t: pipeline(t, trainer(max_steps=2.5)),
        "max_steps: must be an integer, got 2.5",
    ),
    (
        "batch size zero",
        lambda t: pipeline(t, trainer(per_device_train_batch_size=0)),
        "per_device_train_batch_size: must be at least 1",
    ),
    (
        "weight decay negative",
        lambda t: pipeline(t, trainer(weight_decay=-1)),
        "weight_decay: must be 0 or more, got -1",
    ),
    (
        "boolean as text",
        lambda t: pipeline(t, trainer(bf16="yes")),
        "bf16: must be true or false or null, got the text 'yes'",
    ),
    (
        "output_dir set by rlft",
        lambda t: pipeline(t, trainer(output_dir="x")),
        "trainer.output_dir: rlft sets this itself: the stage folder is",
    ),
    (
        "unknown kind",
        lambda t: pipeline(t, stage(kind="sftt")),
        "stages[0].kind: unknown kind 'sftt'; did you mean sft?",
    ),
    (
        "missing kind",
        lambda t: pipeline(t, stage(kind=None)),
        "stages[0].kind: missing; every stage needs a kind",
    ),
    (
        "duplicate stage name",
        lambda t: pipeline(t, with_stage(copy.deepcopy(BASE["stages"][0]))),
        "stages[1].name: 'sft' is used by an earlier stage; names must be unique",
    ),
    (
        "from a stage that does not exist",
        lambda t: pipeline(
            t, with_stage({**ppo("reward_models.tasks:uppercase_copy"), "model": {"from": "sfft"}})
        ),
        "stages[1].model.from: 'sfft' is not an earlier stage; earlier stages: sft; did you mean sft?",
    ),
    (
        "from a stage that comes later",
        lambda t: pipeline(t, with_stage(ppo("reward_models.tasks:uppercase_copy"), first=True)),
        "stages[0].model.from: 'sft' is not an earlier stage; it comes later; move stage 'sft' before 'ppo'",
    ),
    (
        "missing data file",
        lambda t: pipeline(t, stage(data={"train": "nope.jsonl"})),
        "stages[0].data.train: ",
    ),
    (
        "UTF-16 data file, found by validate",
        lambda t: (
            Path(t / "d.jsonl").write_bytes('{"text": "a"}\n'.encode("utf-16")),
            pipeline(t, stage(data={"train": "d.jsonl"})),
        )[1],
        "stages[0].data.train: {tmp}/d.jsonl is UTF-16 text; rlft reads UTF-8: convert it",
    ),
    ("bad launch name", lambda t: pipeline(t, stage(launch="zero9")), "stages[0].launch"),
    (
        "bad pipeline name",
        lambda t: pipeline(t, lambda r: r.update(name="a b")),
        "name: String should match pattern",
    ),
    (
        "on_invalid not a choice",
        lambda t: pipeline(t, stage(data={"train": PROMPTS, "on_invalid": "drop"})),
        "on_invalid",
    ),
    (
        "model with two sources",
        lambda t: pipeline(t, lambda r: r.update(model={"hub": "a/b", "path": "./m"})),
        "give exactly one of",
    ),
    ("not YAML", lambda t: pipeline(t, text="name: [unclosed\n"), "not valid YAML"),
    (
        "YAML that is a list",
        lambda t: pipeline(t, text="- a\n- b\n"),
        "a pipeline file is a mapping with `name` and `stages`",
    ),
    ("no such pipeline file", lambda t: ["validate", str(t / "missing.yaml")], "missing.yaml"),
    (
        "evaluate prompts missing",
        lambda t: pipeline(
            t,
            lambda r: r.update(
                evaluate={"prompts": "no.jsonl", "reward": "reward_models.tasks:uppercase_copy"}
            ),
        ),
        "evaluate.prompts: ",
    ),
    (
        "evaluate reward not importable",
        lambda t: pipeline(t, lambda r: r.update(evaluate={"prompts": PROMPTS, "reward": "nomodule:nofn"})),
        "evaluate.reward: 'nomodule:nofn': cannot find module 'nomodule'",
    ),
    ("--set without =", lambda t: [*pipeline(t), "--set", "oops"], "--set oops: write KEY=VALUE"),
    (
        "--set unknown stage",
        lambda t: [*pipeline(t), "--set", "stages.nope.trainer.max_steps=1"],
        "override stages.nope.trainer.max_steps: no stage named 'nope'",
    ),
    (
        "--set a bad value",
        lambda t: [*pipeline(t), "--set", "stages.sft.trainer.learning_rate=fast"],
        "stages[0].trainer.learning_rate: must be a number, got the text 'fast'",
    ),
    (
        "--set on rlft run",
        lambda t: [
            "run",
            pipeline(t)[1],
            "--set",
            "stages.sft.trainer.max_steps=-3",
            "--run-dir",
            str(t / "runs"),
        ],
        "max_steps: must be a positive number of steps",
    ),
    # --- models ----------------------------------------------------------------------------
    (
        "model folder with only config.json",
        model_case("config.json"),
        "stages[0].model.path: {tmp}/model is not a complete model folder: it has no weights (model.safetensors), "
        "no tokenizer (tokenizer.json or tokenizer_config.json); save the model and its tokenizer",
    ),
    (
        "model folder with only config.json, on rlft run",
        lambda t: ["run", model_case("config.json")(t)[1], "--run-dir", str(t / "runs")],
        "stages[0].model.path: {tmp}/model is not a complete model folder: it has no weights",
    ),
    (
        "model folder without tokenizer",
        model_case("config.json", "model.safetensors"),
        "it has no tokenizer (tokenizer.json",
    ),
    (
        "model folder without config",
        model_case("model.safetensors", "tokenizer.json"),
        "it has no config.json",
    ),
    (
        "model weights only as pickle",
        model_case("config.json", "pytorch_model.bin", "tokenizer.json"),
        "holds its weights only as pickle (pytorch_model.bin), which can run code when loaded; convert them to "
        "safetensors",
    ),
    (
        "model folder missing",
        lambda t: pipeline(t, lambda r: r.update(model={"path": "./nowhere"})),
        "model.path: {tmp}/nowhere does not exist",
    ),
    (
        "model path is a file",
        lambda t: pipeline(
            t, lambda r: (Path(t / "m.txt").write_text("x"), r.update(model={"path": str(t / "m.txt")}))
        ),
        "m.txt is not a folder",
    ),
    (
        "model too large for the memory",
        too_large,
        "{tmp}/model needs 4096.0 GiB to hold its weights as float32, and this machine has",
    ),
    (
        "gguf file missing",
        lambda t: pipeline(
            t, lambda r: r.update(model={"path": str(model_folder(t)), "gguf_file": "m.gguf"})
        ),
        "has no file m.gguf (gguf_file)",
    ),
    (
        "reference without weights",
        model_case("config.json", key="reference"),
        "stages[1].reference.path: {tmp}/model is not a complete model folder: it has no weights",
    ),
    (
        "policy and reference with different tokenizers",
        lambda t: pipeline(t, with_stage(two_tokenizers(t))),
        "stages[1].reference: its tokenizer ({tmp}/ref, 1 tokens) differs from the model's ({tmp}/policy, 2 tokens)",
    ),
    # --- reward functions ------------------------------------------------------------------
    (
        "reward module not importable",
        lambda t: pipeline(t, with_stage(ppo({"function": "nomodule:nofn"}))),
        "stages[1].reward.function: 'nomodule:nofn': cannot find module 'nomodule'",
    ),
    (
        "reward function not in module",
        lambda t: pipeline(t, with_stage(ppo("reward_models.functions:nofn"))),
        "defines no 'nofn' (functions: exact_match",
    ),
    (
        "reward file missing",
        lambda t: pipeline(t, with_stage(ppo("rewards.py:score"))),
        "'rewards.py:score': file {tmp}/rewards.py does not exist",
    ),
    (
        "reward file with a syntax error",
        lambda t: (Path(t / "r.py").write_text("def score(:\n"), pipeline(t, with_stage(ppo("r.py:score"))))[
            1
        ],
        "'r.py:score': cannot read {tmp}/r.py: SyntaxError",
    ),
    (
        "reward function without colon",
        lambda t: pipeline(t, with_stage(ppo({"function": "score"}))),
        "write it as module:function or file.py:function",
    ),
    (
        "reward in a sum not importable",
        lambda t: pipeline(
            t,
            with_stage(
                ppo({"sum": [{"function": "reward_models.tasks:uppercase_copy"}, {"function": "x.y:z"}]})
            ),
        ),
        "stages[1].reward.sum[1].function: 'x.y:z': cannot find module 'x.y'",
    ),
    (
        "reward model folder missing",
        lambda t: pipeline(t, with_stage(ppo({"path": "./rm"}))),
        "stages[1].reward.path: reward model {tmp}/rm is not a folder",
    ),
    # --- data ------------------------------------------------------------------------------
    (
        "malformed JSON line",
        inspect("p.jsonl", lines({**GOOD, "chosen": ""}, '{"prompt": "a4", "chosen": "b4", "rejected": ')),
        "data.train: no valid rows left: all 2 were rejected (see {tmp}/rep/rejects.jsonl); the first: data.train: "
        "row 1 of {tmp}/p.jsonl (line 1): field 'chosen' is empty; data.train: row 2 of {tmp}/p.jsonl (line 2): "
        "not valid JSON: Expecting value (column 45); fix the line or remove it",
    ),
    (
        "extra column with a type clash",
        inspect("p.jsonl", lines({**GOOD, "margin": "high"}, {**GOOD, "rejected": None})),
        "row 1 of {tmp}/p.jsonl (line 1): field 'margin' must be a number, got the text 'high'",
    ),
    (
        "empty file",
        inspect("p.jsonl", ""),
        "data.train: {tmp}/p.jsonl is empty (0 bytes); a data file needs at least one row",
    ),
    ("blank lines only", inspect("p.jsonl", "\n\n"), "{tmp}/p.jsonl is empty (only blank lines)"),
    (
        "UTF-16 file",
        inspect("p.jsonl", lines(GOOD).encode("utf-16")),
        "data.train: {tmp}/p.jsonl is UTF-16 text; rlft reads UTF-8: convert it, e.g. iconv -f UTF-16 -t UTF-8",
    ),
    (
        "UTF-16 without BOM",
        inspect("p.jsonl", lines(GOOD).encode("utf-16-le")),
        "is UTF-16 text; rlft reads UTF-8",
    ),
    ("binary file", inspect("p.jsonl", bytes(range(256)) * 8), "{tmp}/p.jsonl holds binary data, not text"),
    (
        "a folder of no data files",
        inspect("d", {"notes.txt": "x"}),
        "the folder {tmp}/d was not saved by datasets.save_to_disk",
    ),
    ("missing file", inspect("p.jsonl", None), "{tmp}/p.jsonl does not exist"),
    ("unsupported file type", inspect("p.txt", "x"), "has an unsupported type '.txt'"),
    (
        "CSV wrong field count",
        inspect("p.csv", "prompt,chosen,rejected\na,b,c,d\ne,f\n"),
        "none of the 2 rows of {tmp}/p.csv could be read; the first, {tmp}/p.csv line 2: has 4 fields, the header "
        "has 3 (prompt, chosen, rejected); quote a field that holds a comma",
    ),
    ("CSV without header", inspect("p.csv", "a,b,c\nd,e,f\n"), "has no usable CSV header"),
    (
        "JSON array cut off",
        inspect("p.json", '[{"prompt": "a"},\n{"prompt": ]\n'),
        "could not read {tmp}/p.json line 2",
    ),
    (
        "lines that are not objects",
        inspect("p.jsonl", '"a"\n3\n'),
        "none of the 2 rows of {tmp}/p.jsonl could be read; the first, {tmp}/p.jsonl line 1: is not a JSON object",
    ),
    (
        "not UTF-8 lines",
        inspect("p.jsonl", b'{"prompt": "\xff", "chosen": "c", "rejected": "r"}\n{"prompt": "\xfe"}\n'),
        "the first, {tmp}/p.jsonl line 1: is not UTF-8 text (byte b'\\xff' at column 13); save the file as UTF-8",
    ),
    (
        "wrong columns for the format",
        inspect("p.jsonl", lines({"prompt": "a", "completion": "b"})),
        "which make none of the formats",
    ),
    (
        "field mapped to no column",
        inspect("p.jsonl", lines({"prompt": "p", "answer": "c", "rejected": "r"}), "--field", "chosen=answr"),
        "data.fields.chosen: column 'answr' is not in {tmp}/p.jsonl (data.train); its columns are prompt, answer, "
        "rejected; did you mean 'answer'?",
    ),
    (
        "--field without =",
        inspect("p.jsonl", lines(GOOD), "--field", "chosen"),
        "--field chosen: write CANONICAL=COLUMN",
    ),
]


@pytest.mark.parametrize("make,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(make, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = make(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: ")
    assert expected.format(tmp=tmp_path) in err, err


def test_enough_cases():
    assert len(CASES) >= 40


def test_debug_shows_the_traceback(tmp_path):
    from rlft.errors import ConfigError

    with pytest.raises(ConfigError, match="max_steps: must be a positive number"):
        main(["--debug", *pipeline(tmp_path, trainer(max_steps=-5))])


@pytest.mark.parametrize(
    "body,expected",
    [
        (
            "return [float('nan')] * len(completions)",
            "stages.ppo: non-finite reward 'score' (",
        ),
        (
            "return [1.0]",
            "reward 'score' returned 1 rewards for 4 completions; a reward function returns one float",
        ),
        (
            "return [1 / 0 for c in completions]",
            "reward 'score' raised ZeroDivisionError: division by zero (at ",
        ),
    ],
    ids=["NaN", "wrong length", "raises"],
)
def test_a_reward_function_that_breaks_at_run_time(body, expected, tmp_path, capsys):
    """Found only when the reward runs: the stage fails with the reason, exit code 2, no traceback."""
    (tmp_path / "r.py").write_text(f"def score(prompts, completions, **fields):\n    {body}\n")
    raw = copy.deepcopy(BASE)
    raw["stages"] = [
        {
            "name": "ppo",
            "kind": "ppo",
            "data": {"train": PROMPTS, "max_rows": 8},
            "reward": "r.py:score",
            "steps": 1,
            "rollout_batch_size": 4,
            "minibatch_size": 4,
            "max_new_tokens": 4,
            "evaluate": False,
        }
    ]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "stage 'ppo' failed: " in err and expected in err
    if "raised" in expected:  # the whole traceback of the user's function is in the stage's log
        log = (tmp_path / "run" / ".work" / "ppo" / "stage.log").read_text()
        assert "Traceback" in log and "1 / 0" in log
