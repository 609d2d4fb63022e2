"""`rlft eval RUN_DIR`: every policy stage of a finished run, measured on the same held-out prompts.

For each stage that left a generating model (SFT, DPO, KTO, PPO, GRPO, RLOO, ...), on the
pipeline's `evaluate:` prompts:

    task reward      the verifier's mean on greedy completions, and on `samples` seeded samples per prompt
    RM score         the run's reward model's mean score of the greedy completions (when the run has one)
    win rate         against a baseline stage (the stage it started from, or --against): per prompt,
                     the greedy completions judged by the reward model (else the verifier); ties
                     apart, a 95% bootstrap interval, and the length-controlled variant
    KL               KL(stage || baseline) in nats per response on the stage's own samples, ± its standard error
    length           mean characters of the greedy completions

Written to `RUN_DIR/eval.json` and `RUN_DIR/eval.csv`, and printed as one table. The numbers come
from rlft.evaluation (generation, KL) and rlft.comparisons (win rates); this module picks the
stages, loads their models and lays the table out.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from rlft import yamlio
from rlft.artifacts import read_json, write_json_atomic
from rlft.config import EvaluateConfig
from rlft.errors import ConfigError, RlftError

logger = logging.getLogger(__name__)

NOT_POLICIES = ("reward", "evaluate")  # kinds whose artifact is not a generating model
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
    "kl",
    "kl_stderr",
    "mean_length",
)


def evaluate_run(
    run_dir: str | Path,
    *,
    stages: list[str] | None = None,
    against: str | None = None,
    samples: int = 4,
    max_prompts: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Measure the policy stages of a finished run (all, or `stages`); returns one row per stage
    (COLUMNS) and writes eval.json and eval.csv into the run folder."""
    from reward_models.loading import RewardLoadError, load_function

    run = Path(run_dir)
    records = _finished_stages(run)
    policies = [
        name for name, r in records.items() if r.get("has_model", True) and r["kind"] not in NOT_POLICIES
    ]
    for name in [*(stages or []), *([against] if against else [])]:
        if name not in policies:
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

    greedy: dict[str, list[str]] = {}  # stage -> greedy completions, kept for the baselines

    def completions_of(name: str, model: Any, tokenizer: Any) -> list[str]:
        from rlft.evaluation import greedy_completions

        if name not in greedy:
            greedy[name] = greedy_completions(model, tokenizer, [r["prompt"] for r in rows], **options)
        return greedy[name]

    results = []
    for name in stages or policies:
        logger.info(f"evaluating stage {name} on {len(rows)} prompts")
        baseline = against or _started_from(records[name], policies)
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
            )
        )
    write_json_atomic(run / "eval.json", results)
    with open(run / "eval.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
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
) -> dict[str, Any]:
    from rlft.comparisons import length_controlled_win_rate, outcomes, win_rate
    from rlft.evaluation import sampled_completions, sampled_kl

    prompts = [r["prompt"] for r in rows]
    fields = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
    model, tokenizer = _load(run / name)
    greedy = completions_of(name, model, tokenizer)
    task = [float(x) for x in verifier(prompts, greedy, **fields)]
    row: dict[str, Any] = {"stage": name, "kind": kind, "baseline": baseline}
    row["task_reward"] = sum(task) / len(task)
    row["mean_length"] = sum(len(c) for c in greedy) / len(greedy)
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


def print_table(results: list[dict[str, Any]], *, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="rlft eval", title_justify="left")
    for col in (
        "stage",
        "baseline",
        "task reward",
        "sampled",
        "RM score",
        "win rate [95% CI]",
        "LC win",
        "KL ± se",
        "length",
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
        kl = f"{r['kl']:.3f} ± {r['kl_stderr']:.3f}" if "kl" in r else "-"
        table.add_row(
            r["stage"],
            r.get("baseline") or "-",
            num(r.get("task_reward")),
            num(r.get("task_reward_sampled")),
            num(r.get("rm_score")),
            win,
            num(r.get("lc_win_rate")),
            kl,
            num(r.get("mean_length"), ".1f"),
        )
    console.print(table)


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
