"""rlft's Python API: what a notebook or a script uses. The CLI (rlft/cli.py) is a thin layer over it.

```python
import rlft

pipeline = rlft.Pipeline.from_yaml("quickstart", overrides=["stages.sft.trainer.max_steps=50"])
pipeline.validate(launch="zero3")          # the launch rules `rlft validate` checks
results = pipeline.run(only="sft")         # one dict per stage: what summary.json holds
run = rlft.load_run("runs/quickstart")     # a finished run: summary, stage.json records, metrics
run.metrics("sft")                         # metrics.jsonl as a pandas DataFrame
```

`rlft.Pipeline.from_dict` takes the same content as a dict; stage configs can be built with the
stage classes (`rlft.SFTStage(name="sft", data={...})`) and dumped into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlft.artifacts import read_json
from rlft.errors import RlftError
from rlft.launch_rules import check_launch_rules
from rlft.pipeline import run_pipeline, summary_entries
from rlft.pipeline_file import PipelineSpec, load_pipeline, parse_overrides, pipeline_from_dict
from rlft.resources import find_pipeline_file
from rlft.stages.base import StageBase
from rlft.tracking import read_metrics

Overrides = list[str] | dict[str, Any] | None


class Pipeline:
    """A validated pipeline: its stages' configs, typed by kind, ready to run."""

    def __init__(self, spec: PipelineSpec):
        self.spec = spec

    @classmethod
    def from_yaml(cls, path: str | Path, *, overrides: Overrides = None) -> Pipeline:
        """Read a pipeline file, or a shipped one by name (`quickstart`). `overrides` as `rlft run --set`
        takes them: `["stages.sft.trainer.max_steps=50"]` (values parsed as YAML), or a dict of them."""
        return cls(load_pipeline(find_pipeline_file(path), overrides=_overrides(overrides)))

    @classmethod
    def from_dict(
        cls, config: dict[str, Any], *, base_dir: str | Path = ".", overrides: Overrides = None
    ) -> Pipeline:
        """A pipeline given as a dict (what a pipeline file holds); its relative paths resolve against
        `base_dir`. A stage may be a stage config object (`rlft.SFTStage(...)`): the keys it was given
        are used, so the pipeline's defaults (`model`, `seed`, `launch`) still apply to the others."""
        if not isinstance(config, dict):
            raise RlftError(
                f"Pipeline.from_dict: a pipeline is a dict with `name` and `stages`, not {type(config).__name__}"
            )
        stages = config.get("stages")
        if isinstance(stages, list):
            config = {**config, "stages": [_stage_dict(s) for s in stages]}
        return cls(pipeline_from_dict(config, base_dir=Path(base_dir), overrides=_overrides(overrides)))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def stages(self) -> list[StageBase]:
        """The stages' configs in order (a `base` evaluation first when the pipeline has `evaluate:`)."""
        return self.spec.stages

    def validate(self, *, launch: str | None = None) -> Pipeline:
        """Check every stage against its launch config (or `launch` for all): the combinations known to
        fail (rlft/launch_rules.py). Keys, types, references and files were checked when it was read.
        Raises ConfigError; returns the pipeline."""
        check_launch_rules(self.spec, launch=launch)
        return self

    def run(
        self,
        *,
        run_dir: str | Path | None = None,
        only: str | None = None,
        from_stage: str | None = None,
        force: bool = False,
        launch: str | None = None,
        strict: bool = False,
    ) -> list[dict[str, Any]]:
        """Run the stages (all, `only` one, or `from_stage` on), skipping those done with the same config
        and inputs (`force` re-runs them). Returns one dict per stage, as in summary.json. Raises
        StageFailed when a stage fails. Under an outer `accelerate launch`, ranks other than 0 return [].
        `strict`: a stage with too little free disk space for its checkpoints fails instead of warning."""
        outcomes = run_pipeline(
            self.spec,
            run_dir=Path(run_dir) if run_dir is not None else None,
            only=only,
            from_stage=from_stage,
            force=force,
            launch=launch,
            strict=strict,
        )
        return summary_entries(outcomes)

    def __repr__(self) -> str:
        stages = ", ".join(f"{s.name} ({s.kind})" for s in self.stages)
        return f"Pipeline({self.name!r}: {stages})"


@dataclass
class Run:
    """A run folder, read back: `runs/<pipeline>/` after `rlft run` (or `Pipeline.run`)."""

    path: Path
    summary: list[dict[str, Any]]  # summary.json: one entry per stage
    stages: dict[str, dict[str, Any]]  # stage name -> its stage.json (finished stages only)

    def metrics(self, stage: str | None = None) -> Any:
        """metrics.jsonl of one stage, or of every finished stage with a `stage` column, as a pandas
        DataFrame (one row per logged step)."""
        import pandas as pd

        names = [stage] if stage is not None else list(self.stages)
        unknown = [n for n in names if n not in self.stages]
        if unknown:
            raise RlftError(
                f"{self.path}: no finished stage {unknown[0]!r} (finished: {', '.join(self.stages) or 'none'})"
            )
        rows = [{"stage": n, **row} for n in names for row in read_metrics(self.path / n / "metrics.jsonl")]
        return pd.DataFrame(rows)


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder: its summary, each finished stage's stage.json, and (`Run.metrics`) its metrics."""
    path = Path(run_dir)
    summary = read_json(path / "summary.json")
    if summary is None:
        raise RlftError(f"{path}: no summary.json here; give the folder of a run (runs/<pipeline>)")
    stages = {}
    for entry in summary:
        record = read_json(path / entry["stage"] / "stage.json")
        if record is not None and record.get("status") == "done":
            stages[entry["stage"]] = record
    return Run(path=path, summary=summary, stages=stages)


def _stage_dict(stage: Any) -> Any:
    if not isinstance(stage, StageBase):
        return stage
    return {"kind": stage.kind, **stage.model_dump(mode="json", by_alias=True, exclude_unset=True)}


def _overrides(overrides: Overrides) -> dict[str, Any]:
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    return parse_overrides(list(overrides))
