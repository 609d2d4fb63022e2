"""Metrics: namespaced names, metrics.jsonl always written, W&B never hangs on the network, W&B
offline runs and TensorBoard event files hold what was logged."""

import json
import os
import struct
import subprocess
import sys
import textwrap
import uuid
import zlib
from pathlib import Path

import pytest
from conftest import QUICKSTART_DATA, tiny_pipeline_yaml

from rlft.config import TrackingConfig
from rlft.errors import ConfigError, RlftError
from rlft.pipeline_file import load_pipeline
from rlft.tracking import Tracker, namespaced, read_metrics


def test_trainer_keys_are_namespaced():
    logs = {"loss": 1.5, "eval_loss": 2.0, "train_loss": 1.7, "train_runtime": 3.0, "epoch": 1.0, "note": "x"}
    logs |= {"rewards/margins": 0.5, "eval_rewards/margins": 0.25}  # TRL's own names keep their namespace
    assert namespaced(logs) == {
        "train/loss": 1.5,
        "eval/loss": 2.0,
        "rewards/margins": 0.5,
        "eval/rewards/margins": 0.25,
        "train/mean_loss": 1.7,
        "train/runtime": 3.0,
        "train/epoch": 1.0,
    }


def test_trainer_callback_adds_tokens_per_second(tmp_path, monkeypatch):
    """perf/tokens_per_second = growth of TRL's num_tokens per second since the last log; a resumed run
    (its token count before the restart unknown) starts measuring from its first log."""
    from types import SimpleNamespace

    from rlft import tracking
    from rlft.tracking import trainer_callback

    clock = iter([10.0, 12.0, 16.0, 100.0, 101.0, 103.0])
    monkeypatch.setattr(tracking.time, "perf_counter", lambda: next(clock))
    tracker = Tracker(tmp_path / "metrics.jsonl")
    callback = trainer_callback(tracker)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    callback.on_train_begin(None, state, None)  # t = 10
    for step, tokens in ((1, 400), (2, 1200)):  # t = 12, 16
        state.global_step = step
        callback.on_log(None, state, None, logs={"loss": 1.0, "num_tokens": tokens})
    state.global_step = 5
    callback.on_train_begin(None, state, None)  # resumed, t = 100
    for step, tokens in ((6, 5000), (7, 5600)):  # t = 101, 103
        state.global_step = step
        callback.on_log(None, state, None, logs={"loss": 1.0, "num_tokens": tokens})
    rates = {m["step"]: m.get("perf/tokens_per_second") for m in read_metrics(tmp_path / "metrics.jsonl")}
    assert rates == {1: 200.0, 2: 200.0, 6: None, 7: 300.0}


def test_trainer_callback_counts_samples_seen_across_a_resume(tmp_path):
    """train/samples_seen grows by the global batch per optimizer step, is saved in the checkpoint's
    trainer state and taken up again by a resumed run (a fresh run starts from 0)."""
    from types import SimpleNamespace

    from rlft.tracking import trainer_callback

    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=2, world_size=3)
    callback = trainer_callback(Tracker(tmp_path / "metrics.jsonl"))
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, stateful_callbacks={})
    callback.on_train_begin(args, state, None)
    for state.global_step in (1, 2):
        callback.on_step_end(args, state, None)
    assert callback.samples_seen == 48
    saved = {type(callback).__name__: callback.state()}  # what the checkpoint's trainer_state.json keeps

    resumed = trainer_callback(Tracker(tmp_path / "metrics.jsonl"))
    state = SimpleNamespace(is_world_process_zero=True, global_step=2, stateful_callbacks=saved)
    resumed.on_train_begin(args, state, None)
    state.global_step = 3
    resumed.on_step_end(args, state, None)
    resumed.on_log(args, state, None, logs={"loss": 1.0})
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["train/samples_seen"] == 72
    state.global_step = 0  # a run from the start ignores whatever state it is given
    resumed.on_train_begin(args, state, None)
    assert resumed.samples_seen == 0


def test_metrics_jsonl_only_on_main_process(tmp_path):
    main, other = Tracker(tmp_path / "a.jsonl"), Tracker(tmp_path / "b.jsonl", main_process=False)
    for t in (main, other):
        t.log({"train/loss": 1.0}, step=1)
        t.log({"train/loss": 0.5}, step=2)
    assert [(m["step"], m["train/loss"]) for m in read_metrics(tmp_path / "a.jsonl")] == [(1, 1.0), (2, 0.5)]
    assert not (tmp_path / "b.jsonl").exists()
    assert main.last == {"train/loss": 0.5}


def _start(tmp_path, env: dict, cfg: TrackingConfig) -> str:
    """Open a W&B run in a fresh process (W&B keeps global state) and return the mode it used."""
    code = textwrap.dedent(
        f"""
        from rlft.config import TrackingConfig
        from rlft.tracking import Tracker
        t = Tracker({str(tmp_path / "m.jsonl")!r})
        mode = t.start_wandb(TrackingConfig.model_validate({cfg.model_dump()!r}), pipeline="p", run_id="r", stage="s", kind="sft", config={{}})
        t.log({{"train/loss": 1.0}}, step=1)
        t.finish({{"done": 1}})
        print("MODE", mode)
        """
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("MODE "))


@pytest.mark.slow
def test_no_api_key_logs_offline(tmp_path):
    assert _start(tmp_path, {}, TrackingConfig()) == "offline"
    assert list(tmp_path.glob("wandb/offline-run-*"))


@pytest.mark.slow
def test_key_without_reachable_server_falls_back_to_offline(tmp_path):
    env = {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}  # nothing listens on port 9
    assert _start(tmp_path, env, TrackingConfig(init_timeout=5)) == "offline"


def test_disabled_opens_no_run(tmp_path):
    t = Tracker(tmp_path / "m.jsonl")
    assert (
        t.start_wandb(
            TrackingConfig(wandb="disabled"), pipeline="p", run_id="r", stage="s", kind="k", config={}
        )
        == "disabled"
    )
    assert t.wandb_run is None


def read_wandb_file(path: Path) -> list:
    """The records of a `.wandb` file, as `wandb_internal_pb2.Record` protos.

    wandb 0.31 ships no Python reader (its Go core writes and syncs these files), so this follows
    the format it writes: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then a LevelDB log
    (32 KiB blocks of chunks: crc32 of type+data, uint16 length, uint8 type FULL/FIRST/MIDDLE/LAST)
    whose records are serialised `Record` protos.
    """
    from wandb.proto import wandb_internal_pb2

    data, block = Path(path).read_bytes(), 32768
    assert data[:4] == b":W&B" and struct.unpack("<HB", data[4:7]) == (0xBEE1, 0), data[:7]
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's last bytes, too few for a chunk header: zero padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # zeroed tail of a file still being written
            break
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad checksum at byte {pos}"
        pending += chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_run_contents(run_file: Path) -> tuple:
    """(RunRecord, config {key: value}, history rows [{key: value}]) of one offline run file."""
    records = read_wandb_file(run_file)
    runs = [r.run for r in records if r.HasField("run")]
    assert len(runs) == 1, f"{run_file}: {len(runs)} run records"
    updates = [*runs[0].config.update, *(u for r in records if r.HasField("config") for u in r.config.update)]
    config = {item.key: json.loads(item.value_json) for item in updates}
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.HasField("history")
    ]
    return runs[0], config, history


@pytest.mark.slow
def test_pipeline_writes_one_offline_wandb_run_per_stage(tmp_path, monkeypatch, capsys):
    """SFT then DPO with `tracking: {wandb: offline}`: each stage folder holds its offline run, grouped by
    pipeline run, job_type = kind, with the stage's metrics in its history."""
    from rlft.pipeline import run_pipeline

    for key in [k for k in os.environ if k.startswith("WANDB_")]:  # conftest sets WANDB_MODE=disabled
        monkeypatch.delenv(key)
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID("12345678" + "0" * 24))  # the pipeline's run id
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        textwrap.dedent(
            f"""
            name: wb
            model:
              tiny: {{hidden_size: 32, num_layers: 1, num_heads: 2, tokenizer_texts: [{QUICKSTART_DATA}/sft_train.jsonl, {QUICKSTART_DATA}/prefs_train.jsonl]}}
            tracking: {{wandb: offline, project: rlft-test, tags: [ci], log_model: true}}
            stages:
              - {{name: sft, kind: sft, data: {{train: {QUICKSTART_DATA}/sft_train.jsonl, max_rows: 16}}, trainer: {{max_steps: 2, logging_steps: 1}}}}
              - name: dpo
                kind: dpo
                model: {{from: sft}}
                data: {{train: {QUICKSTART_DATA}/prefs_train.jsonl, max_rows: 16}}
                max_length: 64
                trainer: {{max_steps: 2, logging_steps: 1}}
            """
        )
    )
    run_dir = tmp_path / "run"
    assert [o.status for o in run_pipeline(load_pipeline(pipeline), run_dir=run_dir)] == ["ran", "ran"]
    out = capsys.readouterr().out
    for stage in ("sft", "dpo"):  # where the run is now (W&B's own message names the deleted work folder)
        assert f"{stage}: W&B offline run kept in {run_dir / stage / 'wandb'}/offline-run-" in out

    for stage in ("sft", "dpo"):
        run_files = list((run_dir / stage / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(run_files) == 1, f"{stage}: offline runs {run_files}"
        run, config, history = wandb_run_contents(run_files[0])
        assert (run.run_group, run.job_type, run.project) == ("wb-12345678", stage, "rlft-test")
        assert run.display_name == f"wb/{stage}" and list(run.tags) == ["ci"]
        assert config["name"] == stage and config["kind"] == stage  # the stage's resolved config
        logged = [row for row in history if "train/loss" in row]
        expected = [m for m in read_metrics(run_dir / stage / "metrics.jsonl") if "train/loss" in m]
        assert [(row["_step"], row["train/loss"]) for row in logged] == [
            (m["step"], m["train/loss"]) for m in expected
        ]
        assert len(logged) == 2  # logging_steps 1, max_steps 2
        artifacts = [r.artifact for r in read_wandb_file(run_files[0]) if r.HasField("artifact")]
        assert [(a.name, a.type) for a in artifacts] == [(f"wb-{stage}", "model")]  # log_model: true
        files = {entry.path for entry in artifacts[0].manifest.contents}
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= files
        assert not any(f.split("/")[0] in ("wandb", "checkpoints", "tensorboard") for f in files)
    assert "rewards/margins" in {key for row in wandb_run_contents(run_files[0])[2] for key in row}


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_file_holds_the_logged_scalars(tmp_path):
    cfg = TrackingConfig(wandb="disabled", tensorboard=True)
    t = Tracker(tmp_path / "work" / "metrics.jsonl", log_dir=tmp_path / "stage")
    assert t.start_wandb(cfg, pipeline="p", run_id="r", stage="s", kind="sft", config={}) == "disabled"
    logged = [
        (1, {"train/loss": 2.5, "train/learning_rate": 1e-3}),
        (2, {"train/loss": 1.25}),
        (3, {"eval/loss": 0.75}),
    ]
    for step, metrics in logged:
        t.log(metrics, step=step)
    t.finish({"train/mean_loss": 1.9})
    assert len(list((tmp_path / "stage" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert _tensorboard_scalars(tmp_path / "stage" / "tensorboard") == {
        "train/loss": [(1, 2.5), (2, 1.25)],
        "train/learning_rate": [(1, pytest.approx(1e-3))],  # stored as float32
        "eval/loss": [(3, 0.75)],
    }
    assert len(read_metrics(tmp_path / "work" / "metrics.jsonl")) == 3  # metrics.jsonl as always

    other = Tracker(tmp_path / "o" / "m.jsonl", main_process=False)
    other.start_wandb(cfg, pipeline="p", run_id="r", stage="s", kind="sft", config={})
    other.log({"train/loss": 1.0}, step=1)
    other.finish()
    assert not (tmp_path / "o").exists()  # only the main process writes


def test_tensorboard_missing_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a)
    )
    path = tmp_path / "p.yaml"
    path.write_text(tiny_pipeline_yaml() + "tracking: {tensorboard: true}\n")
    with pytest.raises(
        ConfigError, match=r"tracking: the `tensorboard` package is not installed: `pip install"
    ):
        load_pipeline(path)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails at run time too
    t = Tracker(tmp_path / "m.jsonl")
    with pytest.raises(RlftError, match="pip install tensorboard"):
        t.start_tensorboard()


def test_tracker_logs_in_the_stage_folder_leave_its_artifact_hash_alone(tmp_path):
    from rlft.artifacts import model_files_hash

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    before = model_files_hash(tmp_path)
    for name in ("wandb/offline-run-1/run-1.wandb", "tensorboard/events.out.tfevents.1"):
        (tmp_path / name).parent.mkdir(parents=True)
        (tmp_path / name).write_bytes(b"log")
    assert model_files_hash(tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert model_files_hash(tmp_path) != before
