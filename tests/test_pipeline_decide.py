"""What the pipeline does with a stage (rlft.pipeline.decide): a pure decision, tested apart from running.

The end-to-end behaviour (a finished stage skipped, a killed one resumed, a sweep point shared) is
in tests/test_pipeline.py and tests/test_sweep.py; here each rule and their order, on plain values,
and `read_stage_facts` on folders laid out by hand.
"""

import json
from pathlib import Path

import pytest

from rlft.errors import ConfigError
from rlft.pipeline import Resume, Run, Share, Skip, StageFacts, decide, read_stage_facts, selected_stages

HASH, INPUTS = "c0ffee", {"model": "tiny:1", "data": {"/d/train.jsonl": "ab12"}}


def record(status="done", config_hash=HASH, inputs=INPUTS):
    return {"status": status, "config_hash": config_hash, "inputs": inputs}


def facts(done=None, elsewhere=(), plan=None, checkpoints=()):
    return StageFacts(done=done, elsewhere=list(elsewhere), plan=plan, checkpoints=list(checkpoints))


def test_done_with_the_same_config_and_inputs_is_skipped():
    assert decide(HASH, INPUTS, facts(done=record()), force=False) == Skip(record())


@pytest.mark.parametrize(
    "done",
    [
        record(config_hash="other"),
        record(inputs={**INPUTS, "model": "tiny:2"}),
        record(status="failed"),
        None,
    ],
    ids=["config changed", "an input changed", "not done", "never ran"],
)
def test_anything_else_runs(done):
    assert decide(HASH, INPUTS, facts(done=done), force=False) == Run()


def test_force_runs_even_what_is_done_shared_or_resumable():
    everything = facts(
        done=record(), elsewhere=[(Path("/r/sft"), record())], plan=record(), checkpoints=["c-5"]
    )
    assert decide(HASH, INPUTS, everything, force=True) == Run()


def test_done_elsewhere_is_shared_from_the_first_run_that_has_it():
    elsewhere = [
        (Path("/a/sft"), None),
        (Path("/b/sft"), record(config_hash="other")),
        (Path("/c/sft"), record()),
        (Path("/d/sft"), record()),
    ]
    assert decide(HASH, INPUTS, facts(elsewhere=elsewhere), force=False) == Share(Path("/c/sft"), record())
    assert (
        decide(HASH, INPUTS, facts(elsewhere=[(Path("/e/sft"), record(status="failed"))]), force=False)
        == Run()
    )


def test_skip_comes_before_share_and_share_before_resume():
    both = facts(done=record(), elsewhere=[(Path("/r/sft"), record())], plan=record(), checkpoints=["c-5"])
    assert isinstance(decide(HASH, INPUTS, both, force=False), Skip)
    no_done = facts(elsewhere=[(Path("/r/sft"), record())], plan=record(), checkpoints=["c-5"])
    assert isinstance(decide(HASH, INPUTS, no_done, force=False), Share)


def test_an_unfinished_run_with_the_same_plan_resumes_from_its_last_checkpoint():
    plan = {"config_hash": HASH, "inputs": INPUTS}  # plan.json has no status
    assert decide(HASH, INPUTS, facts(plan=plan, checkpoints=["c-5", "c-10"]), force=False) == Resume("c-10")
    assert (
        decide(HASH, INPUTS, facts(plan=plan, checkpoints=[]), force=False) == Run()
    )  # died before a checkpoint
    changed = {"config_hash": "other", "inputs": INPUTS}
    assert decide(HASH, INPUTS, facts(plan=changed, checkpoints=["c-5"]), force=False) == Run()


def test_read_stage_facts_takes_complete_checkpoints_in_step_order(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    work = run / ".work" / "sft"
    # 150: killed before its state file (written last), 200: killed while writing it (half a JSON file)
    for step, state in ((5, "{}"), (10, "{}"), (100, "{}"), (150, None), (200, '{"global_step": 2')):
        (work / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        if state is not None:
            (work / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (work / "plan.json").write_text(json.dumps({"config_hash": HASH, "inputs": INPUTS}))
    (run / "sft").mkdir(parents=True)
    (run / "sft" / "stage.json").write_text(json.dumps(record(status="failed")))
    (other / "sft").mkdir(parents=True)
    (other / "sft" / "stage.json").write_text(json.dumps(record()))

    got = read_stage_facts(run, "sft", reuse=[other, tmp_path / "missing"])
    assert got.done is None  # only a finished stage counts as done
    assert got.checkpoints == [
        str(work / "checkpoints" / f"checkpoint-{s}") for s in (5, 10, 100)
    ]  # 10 < 100
    assert got.elsewhere == [(other / "sft", record()), (tmp_path / "missing" / "sft", None)]
    assert decide(HASH, INPUTS, got, force=False) == Share(other / "sft", record())
    assert decide(HASH, INPUTS, read_stage_facts(run, "sft"), force=False) == Resume(got.checkpoints[-1])


def test_only_and_from_select_stages():
    names = ["base", "sft", "reward", "dpo"]
    assert selected_stages(names, only=None, from_stage=None) == set(names)
    assert selected_stages(names, only="reward", from_stage=None) == {"reward"}
    assert selected_stages(names, only=None, from_stage="reward") == {"reward", "dpo"}
    with pytest.raises(ConfigError, match="--only rewrd: no such stage \\(stages: base, sft, reward, dpo\\)"):
        selected_stages(names, only="rewrd", from_stage=None)
