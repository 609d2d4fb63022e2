"""`kind: generate`: preference data from a model; trains nothing.

    setup:  reward -> model + tokenizer -> prompts (prompt-only rows; other columns reach the reward)
    sample: num_samples completions per prompt, batched and KV-cached, seeded      rlft.generation
    score:  the stage's `reward:` (the block PPO takes: functions, reward models, weighted sums)
    write:  pairs.jsonl (best vs worst, or every pair whose gap clears min_margin), best_of_n.jsonl,
            scored.jsonl, generate_report.json: into the stage's folder

A later stage reads a file with `data: {train: {from: STAGE}}` (pairs.jsonl) or
`{from: STAGE, file: best_of_n}`; its content hash is part of that stage's inputs.
Under several processes (`launch:`) each one samples and scores its share of the batches (every
batch seeded on its own: the same files as one process) and rank 0 writes them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rlft.config import Strict, also_accepts
from rlft.data import DataConfig
from rlft.errors import ConfigError
from rlft.rewards import RewardSpec
from rlft.stages.base import StageBase, StageContext, StageResult
from rlft.stages.common import build_reward_fn, load_data


class WriteConfig(Strict):
    """Which files the stage writes. A list of names is shorthand: `write: [pairs, best_of_n]`."""

    model_config = Strict.model_config | {
        "json_schema_extra": also_accepts(
            {"type": "array", "items": {"enum": ["pairs", "best_of_n", "scored"]}}
        )
    }

    pairs: Literal["best_worst", "all"] | None = Field(
        "best_worst",
        description="pairs.jsonl: best_worst (best vs worst sample per prompt), all (every pair whose gap is "
        ">= min_margin), or null: none",
    )
    best_of_n: bool = Field(
        False, description="best_of_n.jsonl: the best completion per prompt (prompt-completion rows)"
    )
    scored: bool = Field(False, description="scored.jsonl: every sample with its score")

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data: Any) -> Any:
        if isinstance(data, list):
            unknown = [n for n in data if n not in ("pairs", "best_of_n", "scored")]
            if unknown:
                raise ValueError(f"unknown output {unknown[0]!r}; outputs are pairs, best_of_n, scored")
            return {
                "pairs": "best_worst" if "pairs" in data else None,
                **{n: True for n in data if n != "pairs"},
            }
        return data

    @model_validator(mode="after")
    def _something(self) -> WriteConfig:
        if not self.files():
            raise ValueError("write nothing? turn on at least one of pairs, best_of_n, scored")
        return self

    def files(self) -> list[str]:
        """The file names this config writes."""
        on = {"pairs": self.pairs is not None, "best_of_n": self.best_of_n, "scored": self.scored}
        return [f"{name}.jsonl" for name, active in on.items() if active]


class GenerateStage(StageBase):
    """Samples completions of `model` to `prompts`, scores them with `reward`, writes preference pairs,
    best-of-N rows and scored samples as JSONL for later stages (`data: {train: {from: STAGE}}`)."""

    kind: Literal["generate"] = Field(
        "generate", description="preference data from a model: sample, score with a reward, write pairs"
    )
    prompts: DataConfig = Field(
        description="prompt-only rows (standard or conversational); other columns, e.g. `answer`, reach the "
        "reward as fields. A path is shorthand for {train: PATH}",
        json_schema_extra=also_accepts({"type": "string", "description": "a path: {train: PATH}"}),
    )
    reward: RewardSpec = Field(
        description="what scores the samples: {from: STAGE}, {path: DIR}, {function: module:fn} or {sum: [...]} "
        "(as PPO's)"
    )
    num_samples: int = Field(4, ge=1, description="completions sampled per prompt: more = wider score gaps")
    temperature: float = Field(1.0, gt=0, description="sampling temperature: higher = more diverse samples")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: lower cuts the unlikely tail")
    max_new_tokens: int = Field(64, gt=0, description="completion length limit in tokens")
    batch_size: int = Field(64, gt=0, description="sequences per generate call: lower = less memory")
    min_margin: float = Field(
        0.0, ge=0, description="a pair needs a score gap >= this (and > 0: ties are dropped)"
    )
    write: WriteConfig = Field(default_factory=WriteConfig, description="which files to write")

    @field_validator("prompts", mode="before")
    @classmethod
    def _path_shorthand(cls, value: Any) -> Any:
        return {"train": value} if isinstance(value, str | list) else value

    @model_validator(mode="after")
    def _pairs_need_two(self) -> GenerateStage:
        if self.write.pairs is not None and self.num_samples < 2:
            raise ValueError("pairs need num_samples >= 2 (write: [best_of_n] or [scored] for one sample)")
        return self

    def data_sections(self) -> dict[str, Any]:
        return {"prompts": self.prompts}

    def references(self) -> list[tuple[str, str]]:
        return super().references() + [("reward", name) for name in self.reward.references()]

    def output_files(self) -> list[str]:
        return self.write.files()


def run(cfg: GenerateStage, ctx: StageContext) -> StageResult:
    import torch
    from accelerate import PartialState

    from rlft.models.loading import load_tokenizer, resolve_source
    from rlft.reference import load_merged_model

    # the process group as `accelerate launch` configured it (gloo on the CPU); one process: no group
    state = PartialState(cpu=not torch.cuda.is_available())
    rank, world = state.process_index, state.num_processes
    reward_fn = build_reward_fn(cfg, ctx)
    resolved = resolve_source(
        cfg.model, model_paths=ctx.model_paths, run_dir=ctx.run_dir, base_dir=ctx.base_dir
    )
    ctx.log(f"model: {resolved.description}")
    tokenizer, fixups = load_tokenizer(resolved)
    model = load_merged_model(resolved, dtype=cfg.model.dtype, tokenizer=tokenizer, log=ctx.log)
    model.to(state.device)
    data = load_data(cfg, ctx, formats=("prompt_only",), tokenizer=tokenizer, key="prompts")
    rows = data.train.to_list()
    prompts = [row["prompt"] for row in rows]
    fields = {k: [row[k] for row in rows] for k in data.train.column_names if k != "prompt"}
    ctx.log(
        f"sampling {cfg.num_samples} completions for each of {len(prompts)} prompts on {world} process(es)"
    )

    start = time.time()
    mine = sample_and_score(cfg, model, tokenizer, prompts, fields, reward_fn, rank=rank, world_size=world)
    parts = [mine]
    if world > 1:  # every process sampled and scored its share of the batches: rank 0 writes them all
        from accelerate.utils import gather_object

        parts = gather_object([mine])
    errors = [part["error"] for part in parts if "error" in part]
    if errors:  # on every process, so none waits for the others
        raise ConfigError(f"stages.{cfg.name}.reward: {errors[0]}")
    seconds = time.time() - start
    batches = {index: batch for part in parts for index, batch in part["batches"].items()}
    texts = [t for index in sorted(batches) for t in batches[index][0]]
    flat_scores = [s for index in sorted(batches) for s in batches[index][1]]
    k = cfg.num_samples
    samples = [texts[i : i + k] for i in range(0, len(texts), k)]
    scores = [flat_scores[i : i + k] for i in range(0, len(flat_scores), k)]
    rank_info = {"rank": rank, "world_size": world, "batches": sorted(mine.get("batches", {}))}
    if not state.is_main_process:
        return StageResult(has_model=False, rank=rank_info)
    report = write_outputs(cfg, ctx.artifact_dir, prompts, samples, scores)
    report["sampling_seconds"] = round(seconds, 2)  # sampling and scoring, all processes
    report["samples_per_second"] = round(report["samples"] / max(seconds, 1e-9), 1)
    report["processes"] = world
    (ctx.artifact_dir / "generate_report.json").write_text(json.dumps(report, indent=2) + "\n")
    ctx.log(describe(report))
    metrics = {f"generate/{k}": v for k, v in report.items() if isinstance(v, int | float)}
    return StageResult(
        metrics=metrics,
        info={"tokenizer_fixups": fixups, "model": resolved.description, "generate": report},
        has_model=False,
        rank=rank_info,
    )


def sample_and_score(
    cfg: GenerateStage,
    model: Any,
    tokenizer: Any,
    prompts: list[Any],
    fields: dict[str, list[Any]],
    reward_fn: Any,
    *,
    rank: int,
    world_size: int,
) -> dict[str, Any]:
    """This process's share: {"batches": {batch index: (texts, scores)}}, or {"error": why the reward failed}."""
    from rlft.generation import sample_batches, score_flat

    batches = sample_batches(
        model,
        tokenizer,
        prompts,
        num_samples=cfg.num_samples,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        progress=rank == 0,
        rank=rank,
        world_size=world_size,
    )
    scored = {}
    for index, texts in batches.items():
        # sequence j of batch `index` answers prompt (index * batch_size + j) // num_samples
        owners = [(index * cfg.batch_size + j) // cfg.num_samples for j in range(len(texts))]
        try:
            scored[index] = (texts, score_flat(reward_fn, prompts, texts, owners, fields))
        except ValueError as e:
            return {"error": str(e)}
    return {"batches": scored}


def write_outputs(
    cfg: GenerateStage,
    out: Path,
    prompts: list[Any],
    samples: list[list[str]],
    scores: list[list[float]],
) -> dict[str, Any]:
    """Write the files `cfg.write` asks for into `out`; returns the data report (counts, mean scores)."""
    from rlft.generation import as_completion, best_of_n, select_pairs

    flat = [s for group in scores for s in group]
    report: dict[str, Any] = {
        "prompts": len(prompts),
        "samples": len(flat),
        "mean_score": _mean(flat),
        "files": cfg.write.files(),
    }
    out.mkdir(parents=True, exist_ok=True)
    if cfg.write.pairs is not None:
        pairs, counts = select_pairs(scores, mode=cfg.write.pairs, min_margin=cfg.min_margin)
        rows = [
            {
                "prompt": prompts[p],
                "chosen": as_completion(prompts[p], samples[p][pair.chosen]),
                "rejected": as_completion(prompts[p], samples[p][pair.rejected]),
            }
            for p, pair in pairs
        ]
        _write_jsonl(out / "pairs.jsonl", rows)
        report.update(
            pairs=counts.pairs,
            ties_dropped=counts.ties,
            below_margin_dropped=counts.below_margin,
            mean_score_chosen=_mean([pair.score_chosen for _, pair in pairs]),
            mean_score_rejected=_mean([pair.score_rejected for _, pair in pairs]),
        )
    if cfg.write.best_of_n:
        best = best_of_n(scores)
        rows = [
            {"prompt": p, "completion": as_completion(p, group[b])}
            for p, group, b in zip(prompts, samples, best, strict=True)
        ]
        _write_jsonl(out / "best_of_n.jsonl", rows)
        report.update(
            best_of_n=len(rows), mean_score_best=_mean([s[b] for s, b in zip(scores, best, strict=True)])
        )
    if cfg.write.scored:
        rows = [
            {"prompt": p, "completion": as_completion(p, text), "score": score, "sample": k}
            for p, group, group_scores in zip(prompts, samples, scores, strict=True)
            for k, (text, score) in enumerate(zip(group, group_scores, strict=True))
        ]
        _write_jsonl(out / "scored.jsonl", rows)
    return report


def describe(report: dict[str, Any]) -> str:
    """One line for the log: what was sampled and kept."""
    line = f"{report['samples']} samples for {report['prompts']} prompts, mean score {_num(report['mean_score'])}"
    if "pairs" in report:
        line += (
            f"; {report['pairs']} pairs (chosen {_num(report['mean_score_chosen'])} vs rejected "
            f"{_num(report['mean_score_rejected'])}), {report['ties_dropped']} ties and "
            f"{report['below_margin_dropped']} below min_margin dropped"
        )
    if "best_of_n" in report:
        line += f"; best-of-N mean score {_num(report['mean_score_best'])}"
    return line


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
