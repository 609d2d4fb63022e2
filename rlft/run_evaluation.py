"""`rlft eval RUN_DIR`: every policy stage of a finished run, measured on the same held-out prompts.

For each stage that left a generating model (SFT, DPO, KTO, PPO, GRPO, RLOO, ...), on the
pipeline's `evaluate:` prompts:

    task reward      the verifier's mean on greedy completions, and on `samples` seeded samples per prompt
    RM score         the run's reward model's mean score of the greedy completions (when the run has one)
    win rate         against a baseline stage (the stage it started from, or --against): per prompt,
                     the greedy completions judged by the reward model (else the verifier); ties
                     apart, a 95% bootstrap interval, and the length-controlled variant
    KL               KL(stage || baseline) in nats per response on the stage's own samples, ± its standard error
    judge            with `evaluate.judge` (or --judge): a pairwise LLM judge's win rate of the greedy
                     completions against the baseline's, each pair asked in both orders (a tie when the
                     orders disagree), with its bootstrap interval (rlft.judge)
    length           mean characters of the greedy completions (median_length, p90_length in the
                     files), and the shares of empty answers and of one word repeated (empty_share,
                     repeat_share), where reward hacking shows first
    held out         what the stage measured on its own held-out data at its end (stage.json): an SFT
                     stage's perplexity on its eval split, a preference stage's preference accuracy;
                     and every policy stage's perplexity on the first SFT stage's held-out rows
                     (sft_heldout_perplexity): what later stages gave up of the demonstrations

Reward models get a row of their own (held-out pairwise accuracy, and the ECE of σ(margin) with its
reliability table in eval.json), and so do encoders (contrastive representation mode: retrieval
accuracy@1 and MRR), from their stage.json.

Written to `RUN_DIR/eval.json` and `RUN_DIR/eval.csv`, and printed as one table. The numbers come
from rlft.evaluation (generation, KL) and rlft.comparisons (win rates); this module picks the
stages, loads their models and lays the table out.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from rlft import yamlio
from rlft.artifacts import read_json, write_json_atomic
from rlft.config import EvaluateConfig, JudgeConfig
from rlft.errors import ConfigError, RlftError

logger = logging.getLogger(__name__)

# kinds whose artifact is not a generating model; an evaluate stage has one only with save_model
# (has_model in its stage.json), and then it is the starting model: a policy row, a baseline
NOT_POLICIES = ("reward",)
COLUMNS = (
    "stage",
    "kind",
    "baseline",
    "task_reward",
    "task_reward_sampled",
    "rm_score",
    "win_rate",
    "win_rate_low",
    "win_rate_high",
    "wins",
    "ties",
    "losses",
    "lc_win_rate",
    "judge",
    "judge_win_rate",
    "judge_win_rate_low",
    "judge_win_rate_high",
    "judge_ties",
    "kl",
    "kl_stderr",
    "mean_length",
    "median_length",
    "p90_length",
    "empty_share",
    "repeat_share",
    "perplexity",
    "sft_heldout_perplexity",
    "preference_accuracy",
    "pair_accuracy",
    "ece",
    "retrieval_accuracy",
    "retrieval_mrr",
)


def evaluate_run(
    run_dir: str | Path,
    *,
    stages: list[str] | None = None,
    against: str | None = None,
    samples: int = 4,
    max_prompts: int | None = None,
    seed: int = 0,
    judge: JudgeConfig | None = None,
    known: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Measure the policy stages of a finished run (all, or `stages`); returns one row per stage
    (COLUMNS) and writes eval.json and eval.csv into the run folder. `judge` replaces the pipeline's
    `evaluate.judge`.

    `known` (filled in here) maps what a row depends on (evaluate_key) to the row: a stage whose
    weights, baseline's weights, reward model and evaluation settings equal those of a row already in
    it is not measured again. `rlft sweep` passes one dict for all its points, whose shared (linked)
    stages are identical."""
    from reward_models.loading import RewardLoadError, load_function

    run = Path(run_dir)
    records = _finished_stages(run)
    policies = [name for name, r in records.items() if _is_policy(r)]
    measured = [name for name, r in records.items() if _measured(r)]  # reward models, encoders
    for name in [*(stages or []), *([against] if against else [])]:
        if name not in policies and (name == against or name not in measured):
            raise ConfigError(
                f"{run}: no finished policy stage {name!r} to evaluate (finished: {', '.join(policies) or 'none'})"
            )
    base_dir = Path(next(iter(records.values())).get("base_dir") or run)
    evaluate = _evaluate_config(run)
    try:
        verifier = load_function(evaluate.reward, base_dir=base_dir)
    except RewardLoadError as e:
        raise ConfigError(f"evaluate.reward: {e}") from None
    rows = _prompt_rows(evaluate, base_dir, max_prompts or evaluate.max_prompts)
    reward_model = _reward_model(run, records)
    options = {"max_new_tokens": evaluate.max_new_tokens, "batch_size": evaluate.batch_size}
    judge_config = judge or evaluate.judge
    judges: list[Any] = []  # the judge's (model, tokenizer), loaded when first needed

    def judge_of() -> tuple[Any, Any]:
        if not judges:
            judges.append(_load_judge(judge_config, run, base_dir, records))
        return judges[0]

    greedy: dict[str, list[str]] = {}  # stage -> greedy completions, kept for the baselines
    heldout = _sft_heldout(records, max_rows=max_prompts or evaluate.max_prompts)

    def completions_of(name: str, model: Any, tokenizer: Any) -> list[str]:
        from rlft.evaluation import greedy_completions

        if name not in greedy:
            greedy[name] = greedy_completions(model, tokenizer, [r["prompt"] for r in rows], **options)
        return greedy[name]

    results = []
    for name in stages or [n for n in records if n in policies or n in measured]:
        if name in measured:
            results.append(_recorded_row(name, records[name]))
            continue
        baseline = against or _started_from(records[name], policies)
        key = evaluate_key(
            records,
            name,
            baseline=baseline,
            settings=[
                evaluate.model_dump(),
                samples,
                seed,
                max_prompts,
                judge_config and judge_config.model_dump(),
            ],
        )
        if known is not None and key is not None and key in known:
            logger.info(
                f"stage {name}: the same weights, baseline and settings as a stage measured before; its row reused"
            )
            results.append(dict(known[key]))
            continue
        logger.info(f"evaluating stage {name} on {len(rows)} prompts")
        results.append(
            _evaluate_stage(
                run,
                name,
                records[name]["kind"],
                baseline=baseline if baseline != name else None,
                rows=rows,
                verifier=verifier,
                reward_model=reward_model,
                completions_of=completions_of,
                samples=samples,
                seed=seed,
                options=options,
                judge=(judge_config, judge_of) if judge_config is not None else None,
                heldout=heldout,
            )
        )
        if known is not None and key is not None:
            known[key] = results[-1]
    write_json_atomic(run / "eval.json", results)
    with open(run / "eval.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    if _used_wandb(run, records):
        try:
            _log_to_wandb(run, records, results, rows=rows, greedy=greedy, verifier=verifier)
        except Exception as e:  # noqa: BLE001 - eval.json and eval.csv are written; W&B is a copy
            logger.warning(f"evaluation not logged to W&B ({type(e).__name__}: {e}); eval.json has it all")
    return results


def _evaluate_stage(
    run: Path,
    name: str,
    kind: str,
    *,
    baseline: str | None,
    rows: list[dict[str, Any]],
    verifier: Any,
    reward_model: Any,
    completions_of: Any,
    samples: int,
    seed: int,
    options: dict[str, int],
    heldout: tuple[str, list[dict[str, Any]], int | None] | None = None,
    judge: tuple[JudgeConfig, Any] | None = None,
) -> dict[str, Any]:
    from rlft.comparisons import length_controlled_win_rate, length_statistics, outcomes, win_rate
    from rlft.evaluation import sampled_completions, sampled_kl

    prompts = [r["prompt"] for r in rows]
    fields = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
    model, tokenizer = _load(run / name)
    greedy = completions_of(name, model, tokenizer)
    task = [float(x) for x in verifier(prompts, greedy, **fields)]
    row: dict[str, Any] = {"stage": name, "kind": kind, "baseline": baseline}
    row |= _recorded_policy_columns(kind, read_json(run / name / "stage.json") or {})
    row["task_reward"] = sum(task) / len(task)
    row |= length_statistics(greedy)
    if heldout is not None:
        row |= heldout_perplexity(model, tokenizer, heldout)
    if samples > 0:
        sampled = sampled_completions(
            model, tokenizer, prompts, samples_per_prompt=samples, seed=seed, **options
        )
        repeated = {k: [v for v in values for _ in range(samples)] for k, values in fields.items()}
        flat_prompts = [p for p in prompts for _ in range(samples)]
        scores = verifier(flat_prompts, [c for group in sampled for c in group], **repeated)
        row["task_reward_sampled"] = sum(map(float, scores)) / len(scores)
    judge_scores = reward_model.score(prompts, greedy) if reward_model is not None else task
    if reward_model is not None:
        row["rm_score"] = sum(judge_scores) / len(judge_scores)
    if baseline is not None:
        base_model, base_tokenizer = _load(run / baseline)
        base_greedy = completions_of(baseline, base_model, base_tokenizer)
        if reward_model is not None:
            base_scores = reward_model.score(prompts, base_greedy)
        else:
            base_scores = [float(x) for x in verifier(prompts, base_greedy, **fields)]
        won = win_rate(judge_scores, base_scores, seed=seed)
        row |= {
            "win_rate": won.rate,
            "win_rate_low": won.low,
            "win_rate_high": won.high,
            "wins": won.wins,
            "ties": won.ties,
            "losses": won.losses,
            "judge": "reward model" if reward_model is not None else "task reward",
            "lc_win_rate": length_controlled_win_rate(
                outcomes(judge_scores, base_scores), [len(c) for c in greedy], [len(c) for c in base_greedy]
            ),
        }
        if judge is not None:
            row |= _judge_columns(judge[0], *judge[1](), prompts, greedy, base_greedy, seed=seed)
        if base_tokenizer.get_vocab() == tokenizer.get_vocab():
            kl = sampled_kl(
                model,
                base_model,
                tokenizer,
                prompts,
                samples_per_prompt=max(samples, 1),
                seed=seed,
                **options,
            )
            row |= {"kl": kl.mean, "kl_stderr": kl.stderr}
    return row


SAMPLES_LOGGED = 20  # prompts per stage in the W&B samples table


def _used_wandb(run: Path, records: dict[str, dict[str, Any]]) -> bool:
    """Whether the run logged to W&B: a stage folder keeps its W&B run (wandb/)."""
    return any((run / name / "wandb").is_dir() for name in records)


def _log_to_wandb(
    run: Path,
    records: dict[str, dict[str, Any]],
    results: list[dict[str, Any]],
    *,
    rows: list[dict[str, Any]],
    greedy: dict[str, list[str]],
    verifier: Any,
) -> None:
    """One more W&B run in the pipeline run's group (job_type `eval`, files in RUN_DIR/_eval/): the
    evaluation table as `eval/table`, and the greedy completions of every evaluated stage beside its
    baseline's as `eval/samples` (the first SAMPLES_LOGGED prompts). Mode and project are the run's
    `tracking:` (WANDB_MODE overrides, as for the stages); both tables also go to RUN_DIR/_eval/*.jsonl."""
    from rlft.config import TrackingConfig
    from rlft.judge import prompt_text
    from rlft.tracking import Tracker

    raw = yamlio.safe_load((run / "pipeline.yaml").read_text()) or {}
    tracking = TrackingConfig.model_validate(raw.get("tracking") or {})
    run_ids = [r["run_id"] for r in records.values() if r.get("run_id")]
    tracker = Tracker(run / "_eval" / "metrics.jsonl", log_dir=run / "_eval")
    mode = tracker.start_wandb(
        tracking,
        pipeline=raw.get("name", run.name),
        run_id=run_ids[-1] if run_ids else "eval",
        stage="eval",
        kind="eval",
        config={"run_dir": str(run), "stages": [r["stage"] for r in results]},
    )
    if mode == "disabled":
        return
    for stale in ("metrics.jsonl", "eval_table.jsonl", "eval_samples.jsonl"):  # the last evaluation's
        (run / "_eval" / stale).unlink(missing_ok=True)
    shown = rows[:SAMPLES_LOGGED]
    prompts = [r["prompt"] for r in shown]
    fields = {k: [r.get(k) for r in shown] for k in shown[0] if k != "prompt"}
    samples = []
    for result in results:
        name, baseline = result["stage"], result.get("baseline")
        if name not in greedy:
            continue
        completions = greedy[name][: len(shown)]
        rewards = [float(x) for x in verifier(prompts, completions, **fields)]
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            samples.append(
                {
                    "stage": name,
                    "prompt": prompt_text(prompt),
                    "completion": completion,
                    "task_reward": rewards[i],
                    "baseline": baseline,
                    "baseline_completion": greedy[baseline][i] if baseline in greedy else None,
                }
            )
    table = [{column: result.get(column) for column in COLUMNS} for result in results]
    tracker.log_table("eval/table", table, step=0)
    tracker.log_table("eval/samples", samples, step=0)
    tracker.finish({f"eval/{r['stage']}/{k}": v for r in table for k, v in r.items() if _number(v)})
    logger.info(f"evaluation logged to W&B ({mode}; files in {run / '_eval'})")


def evaluate_key(
    records: dict[str, dict[str, Any]], name: str, *, baseline: str | None, settings: list[Any]
) -> str | None:
    """What a stage's evaluation row depends on, as one string: the stage's name, kind and weights
    (artifact_hash), its baseline's weights, the run's reward model's weights (the judge of win rates),
    the evaluation settings; None when some weights were not hashed (then the row is always measured)."""
    rewards = [r for r in records.values() if r["kind"] == "reward"]
    hashes = [
        records[name].get("artifact_hash"),
        records[baseline].get("artifact_hash") if baseline else "none",
        rewards[-1].get("artifact_hash") if rewards else "none",
    ]
    if not all(hashes):
        return None
    return json.dumps([name, records[name]["kind"], baseline, *hashes, settings], sort_keys=True, default=str)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_policy(record: dict[str, Any]) -> bool:
    """A stage whose artifact generates: not a reward model, an encoder (contrastive representation
    mode) or a measurement."""
    mode = (record.get("config") or {}).get("mode")
    return record.get("has_model", True) and record["kind"] not in NOT_POLICIES and mode != "representation"


def _measured(record: dict[str, Any]) -> bool:
    """A stage `rlft eval` reports from what it measured at its end: a reward model or an encoder."""
    return record["kind"] == "reward" or (record.get("config") or {}).get("mode") == "representation"


def _recorded_row(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """A reward model's held-out pairwise accuracy and calibration (ECE, with the reliability table in
    eval.json), or an encoder's held-out retrieval: what the stage measured at its end (stage.json)."""
    metrics, info = record.get("metrics") or {}, record.get("info") or {}
    row: dict[str, Any] = {"stage": name, "kind": record["kind"], "baseline": None}
    found = {
        "pair_accuracy": metrics.get("reward_accuracy"),
        "ece": metrics.get("eval/rewards/ece"),
        "reliability": (info.get("calibration") or {}).get("bins"),
        "retrieval_accuracy": metrics.get("retrieval/accuracy@1"),
        "retrieval_mrr": metrics.get("retrieval/mrr"),
    }
    return row | {k: v for k, v in found.items() if v is not None}


def _sft_heldout(
    records: dict[str, dict[str, Any]], *, max_rows: int | None
) -> tuple[str, list[dict[str, Any]], int | None] | None:
    """The held-out rows of the run's first SFT stage that has some (its eval source, or its seeded
    eval_fraction split, read again through the data layer exactly as the stage read them), with the
    stage's name and max_length; None when no SFT stage held rows out."""
    from rlft.data import DataConfig, load_stage_data

    for name, record in records.items():
        config = record.get("config") or {}
        data = config.get("data")
        if record.get("kind") != "sft" or not data or not (data.get("eval") or data.get("eval_fraction")):
            continue
        try:
            loaded = load_stage_data(
                DataConfig.model_validate(data),
                formats=("language_modeling", "prompt_completion"),
                base_dir=Path(record.get("base_dir") or "."),
                rejects_path=Path(tempfile.mkdtemp(prefix="rlft-eval-")) / "rejects.jsonl",
            )
        except (RlftError, OSError) as e:
            logger.warning(f"held-out SFT data of stage {name} not read again ({e}): no held-out perplexity")
            return None
        if loaded.eval is None or len(loaded.eval) == 0:
            continue
        rows = [
            dict(r) for r in loaded.eval.select(range(min(len(loaded.eval), max_rows or len(loaded.eval))))
        ]
        return name, rows, (config.get("trainer") or {}).get("max_length") or 1024
    return None


def heldout_perplexity(
    model: Any, tokenizer: Any, heldout: tuple[str, list[dict[str, Any]], int | None], *, batch_size: int = 16
) -> dict[str, Any]:
    """exp(mean NLL per completion token) of a model on the SFT stage's held-out rows, tokenized as
    rlft's own loops tokenize them (rlft.multitask.encode_sft): the same number for every policy
    stage, so that what later stages gave up of the demonstrations shows."""
    import torch

    from rlft.multitask import collate_sft, encode_sft, token_logps

    source, rows, max_length = heldout
    encoded = [e for e in (encode_sft(tokenizer, r, max_length=max_length) for r in rows) if e is not None]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            batch = collate_sft(encoded[i : i + batch_size], pad_id=pad)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logps, mask = token_logps(logits, batch["labels"])
            total, tokens = total - float(logps.sum()), tokens + int(mask.sum())
    if not tokens:
        return {}
    return {"sft_heldout_perplexity": math.exp(total / tokens), "sft_heldout_of": source}


def _recorded_policy_columns(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """From a policy stage's own held-out measurements (stage.json): an SFT stage's perplexity on its
    eval split, exp(mean token NLL); a preference stage's held-out preference accuracy (the share of
    eval pairs whose chosen answer it ranks above the rejected: DPO, KTO, CPO/SimPO)."""
    metrics = record.get("metrics") or {}
    row: dict[str, Any] = {}
    if kind == "sft" and isinstance(metrics.get("eval/loss"), int | float):
        row["perplexity"] = math.exp(metrics["eval/loss"])
    if isinstance(metrics.get("eval/rewards/accuracies"), int | float):
        row["preference_accuracy"] = metrics["eval/rewards/accuracies"]
    return row


def _judge_columns(
    config: JudgeConfig,
    model: Any,
    tokenizer: Any,
    prompts: list[Any],
    answers: list[str],
    baseline_answers: list[str],
    *,
    seed: int,
) -> dict[str, Any]:
    """The judge's win rate of `answers` against `baseline_answers` (both orders; ties apart)."""
    from rlft.comparisons import win_rate
    from rlft.judge import judge_pairs

    judged = judge_pairs(
        model,
        tokenizer,
        prompts,
        answers,
        baseline_answers,
        template=config.template,
        labels=config.labels,
        chat_template=config.chat_template,
        batch_size=config.batch_size,
    )
    won = win_rate(
        judged.outcomes, [0.5] * len(prompts), seed=seed
    )  # outcome 1 / 0.5 / 0 -> win / tie / loss
    return {
        "judge_win_rate": won.rate,
        "judge_win_rate_low": won.low,
        "judge_win_rate_high": won.high,
        "judge_ties": won.ties,
    }


def _load_judge(config: JudgeConfig, run: Path, base_dir: Path, records: dict[str, Any]) -> tuple[Any, Any]:
    import torch

    from rlft.models.loading import load_causal_lm, load_tokenizer, resolve_source

    resolved = resolve_source(
        config.model,
        model_paths={name: str(run / name) for name in records},
        run_dir=run,
        base_dir=base_dir,
        key="evaluate.judge.model",
    )
    logger.info(f"judge: {resolved.description}")
    tokenizer, _ = load_tokenizer(resolved)
    model = load_causal_lm(resolved, dtype=config.model.dtype, tokenizer=tokenizer)
    if torch.cuda.is_available():
        model.to("cuda")
    return model, tokenizer


def print_table(results: list[dict[str, Any]], *, console: Any = None) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    # into a file or a pipe (a log, CI): whole rows, not 80-column ones
    console = console or Console(width=None if sys.stdout.isatty() else 220)
    table = Table(title="rlft eval", title_justify="left")
    for col in (
        "stage",
        "baseline",
        "task reward",
        "sampled",
        "RM score",
        "win rate [95% CI]",
        "LC win",
        "judge win [95% CI]",
        "KL ± se",
        "length",
        "held out",
    ):
        table.add_column(col, justify="left" if col in ("stage", "baseline") else "right", no_wrap=True)

    def num(value: Any, spec: str = ".3f") -> str:
        return format(value, spec) if isinstance(value, int | float) else "-"

    for r in results:
        win = (
            f"{r['win_rate']:.3f} [{r['win_rate_low']:.2f}, {r['win_rate_high']:.2f}]"
            if "win_rate" in r
            else "-"
        )
        judged = (
            f"{r['judge_win_rate']:.3f} [{r['judge_win_rate_low']:.2f}, {r['judge_win_rate_high']:.2f}]"
            if "judge_win_rate" in r
            else "-"
        )
        kl = f"{r['kl']:.3f} ± {r['kl_stderr']:.3f}" if "kl" in r else "-"
        table.add_row(
            r["stage"],
            r.get("baseline") or "-",
            num(r.get("task_reward")),
            num(r.get("task_reward_sampled")),
            num(r.get("rm_score")),
            win,
            num(r.get("lc_win_rate")),
            judged,
            kl,
            num(r.get("mean_length"), ".1f"),
            _held_out(r),
        )
    console.print(table)


def _held_out(row: dict[str, Any]) -> str:
    """The row's own held-out measurements, in a few words (perplexity, accuracies, ECE, retrieval)."""
    shown = (
        ("perplexity", "ppl", ".2f"),
        ("preference_accuracy", "pref acc", ".3f"),
        ("pair_accuracy", "pair acc", ".3f"),
        ("ece", "ECE", ".3f"),
        ("retrieval_accuracy", "R@1", ".3f"),
    )
    return ", ".join(f"{label} {row[key]:{spec}}" for key, label, spec in shown if key in row) or "-"


def _finished_stages(run: Path) -> dict[str, dict[str, Any]]:
    summary = read_json(run / "summary.json")
    if summary is None:
        raise RlftError(f"{run}: no summary.json here; give the folder of a run (runs/<pipeline>)")
    records = {}
    for entry in summary:
        record = read_json(run / entry["stage"] / "stage.json")
        if record is not None and record.get("status") == "done":
            records[entry["stage"]] = record
    return records


def _evaluate_config(run: Path) -> EvaluateConfig:
    raw = yamlio.safe_load((run / "pipeline.yaml").read_text()) if (run / "pipeline.yaml").is_file() else None
    block = (raw or {}).get("evaluate")
    if not block:
        raise ConfigError(
            f"{run}/pipeline.yaml has no `evaluate:` block: rlft eval needs its held-out prompts and verifier"
        )
    return EvaluateConfig.model_validate(block)


def _prompt_rows(evaluate: EvaluateConfig, base_dir: Path, max_prompts: int | None) -> list[dict[str, Any]]:
    path = Path(evaluate.prompts).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise ConfigError(f"evaluate.prompts: {path} does not exist")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:max_prompts] if max_prompts else rows


def _reward_model(run: Path, records: dict[str, dict[str, Any]]) -> Any:
    """The run's last reward stage as a scorer (normalised when it has statistics), or None."""
    names = [name for name, r in records.items() if r["kind"] == "reward"]
    if not names:
        return None
    from reward_models import RewardModel

    folder = run / names[-1]
    return RewardModel.from_pretrained(folder, normalize=(folder / "reward_stats.json").is_file())


def _started_from(record: dict[str, Any], policies: list[str]) -> str | None:
    """The stage a stage started from (its reference unless it names another), when that is a policy stage."""
    config = record.get("config") or {}
    source = config.get("reference") or config.get("model") or {}
    name = source.get("from") if isinstance(source, dict) else None
    return name if name in policies else None


def _load(folder: Path) -> tuple[Any, Any]:
    from rlft.models.loading import ResolvedModel, load_causal_lm, load_tokenizer

    resolved = ResolvedModel(str(folder), description=f"stage '{folder.name}'")
    tokenizer, _ = load_tokenizer(resolved)
    return load_causal_lm(resolved, tokenizer=tokenizer), tokenizer
