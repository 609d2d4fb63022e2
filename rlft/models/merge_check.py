"""Is a merged adapter the model it claims to be? Checked on logits before an export is written.

A LoRA, DoRA or (IA)^3 model is merged by folding the adapter's update into the weights. A
merge that silently does nothing leaves a folder byte-identical to its base model, which loads
and runs and is wrong: users of other frameworks report such exports. So `rlft export` compares,
on a few fixed inputs, the logits of three models:

    merged     what the export will hold (the stage folder's root, or base + adapter merged here)
    adapted    the base model with the adapter attached unmerged (peft's own forward)
    base       the base model alone

and accepts the export when merged = adapted within `atol`. When the adapter moves the logits
(adapted != base beyond `atol`), a merged model that equals the base (exactly, or within `atol`)
is refused with its own message: the adapter was lost, not merely merged inexactly. An adapter
that does not move the logits (an untrained LoRA: B = 0; (IA)^3 vectors of ones) is reported,
not refused: the export is then its base model, rightly.

Tolerance: `atol = RTOL[dtype] * max(1, max |adapted logits|)`, by the dtype the merged weights
are stored in: 1e-4 in float32 (merging changes only the rounding of W + BA), 5e-3 in float16,
3e-2 in bfloat16 (the merged weight itself is rounded to 8 bits of mantissa).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlft.artifacts import hash_path, read_json

RTOL = {"float32": 1e-4, "float64": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}
CHECK_ROWS = 3  # inputs the three models are compared on
CHECK_LENGTH = 16  # tokens per input
SEED = 0

Outcome = Literal["ok", "zero_adapter", "base_reproduced", "mismatch"]


@dataclass(frozen=True)
class MergeVerdict:
    """What the logits say about a merge. All numbers are max absolute differences of logits."""

    outcome: Outcome
    atol: float
    error: float  # |merged - adapted|: how far the merge is from base + adapter
    effect: float  # |adapted - base|: how far the adapter moves the base model
    from_base: float  # |merged - base|
    rows: int

    def describe(self) -> str:
        on = f"on {self.rows} fixed inputs"
        if self.outcome == "ok":
            return (
                f"merge check passed {on}: merged logits = base + adapter (unmerged) within atol {self.atol:.1e} "
                f"(max difference {self.error:.1e}); they differ from the base model's by up to {self.from_base:.3g}"
            )
        if self.outcome == "zero_adapter":
            return (
                f"merge check {on}: the adapter does not change the base model's logits beyond atol {self.atol:.1e} "
                f"(max change {self.effect:.1e}): it is zero or untrained, and the export is its base model"
            )
        if self.outcome == "base_reproduced":
            exactly = "exactly" if self.from_base == 0 else f"within atol {self.atol:.1e}"
            return (
                f"the merged model reproduces its base model {exactly} {on}, though the adapter moves the logits by "
                f"up to {self.effect:.3g}: the adapter was lost in the merge"
            )
        return (
            f"the merged model's logits differ from base + adapter (unmerged) by up to {self.error:.3g} {on} "
            f"(atol {self.atol:.1e}): the merged weights are not base + adapter"
        )


def merge_verdict(merged: Any, adapted: Any, base: Any, *, rtol: float) -> MergeVerdict:
    """Judge a merge from the three models' logits on the same inputs (tensors of one shape, float)."""
    atol = rtol * max(1.0, adapted.abs().max().item())
    error = (merged - adapted).abs().max().item()
    effect = (adapted - base).abs().max().item()
    from_base = (merged - base).abs().max().item()
    rows = merged.shape[0]
    if effect > atol and from_base <= atol:
        outcome: Outcome = "base_reproduced"
    elif error > atol:
        outcome = "mismatch"
    elif effect <= atol:
        outcome = "zero_adapter"
    else:
        outcome = "ok"
    return MergeVerdict(outcome, atol, error, effect, from_base, rows)


def check_ids(vocab_size: int, *, avoid: int | None = None) -> list[Any]:
    """CHECK_ROWS seeded rows of token ids, each (1, CHECK_LENGTH), without the id `avoid` (padding:
    a classifier pools at the last non-padding token, which the three models must agree on)."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, vocab_size, (CHECK_ROWS, CHECK_LENGTH), generator=generator)
    if avoid is not None:
        ids[ids == avoid] = (avoid + 1) % vocab_size
    return [row[None] for row in ids]


def logits(model: Any, rows: list[Any]) -> Any:
    """The model's logits on each row, stacked, in float32: (R, T, V) for a causal LM, (R, labels) for a classifier.
    Rows go one at a time: no padding, so no model needs a pad token."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        return torch.cat([model(input_ids=row.to(device)).logits.float().cpu() for row in rows])


def rtol_for(model: Any) -> float:
    """RTOL of the dtype the model's weights are in."""
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    return RTOL.get(str(dtype).removeprefix("torch."), RTOL["bfloat16"])


def check_vocab(model: Any) -> int:
    return model.get_input_embeddings().num_embeddings


def base_change(recorded: str | None, base: Path) -> str | None:
    """Why the base model at `base` may not be the one the stage trained its adapter on, or None.

    `recorded` is the stage's `inputs.model` in stage.json: `tiny:<folder name>`, `hub:<name>@<rev>`,
    or the content hash of the folder (for an earlier stage: its `artifact_hash`). A base that has
    changed since (an earlier stage re-run with other settings) would fail the check for no fault
    of the merge, so the check is skipped instead, with this reason.
    """
    if not recorded or recorded.startswith("hub:") or not base.is_dir():
        return None  # nothing recorded to compare with, or a hub model: taken as it is
    if recorded.startswith("tiny:"):
        name = recorded.removeprefix("tiny:")
        return None if base.name == name else f"the stage started from tiny model {name}, not {base.name}"
    stage = read_json(base / "stage.json")
    current = stage.get("artifact_hash") if stage else hash_path(base)
    if current == recorded:
        return None
    return (
        f"{base} has changed since the stage trained its adapter on it (its content hash differs from "
        "stage.json's inputs.model: re-run since?)"
    )


def adapter_base(adapter: Path) -> str | None:
    """The base model an adapter folder names (adapter_config.json's base_model_name_or_path)."""
    try:
        return (
            json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path") or None
        )
    except (OSError, ValueError):
        return None
