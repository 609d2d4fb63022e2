"""Tuning strategies: which parameters of a stage's model train, and how its artifact is saved.

``tuning:`` is orthogonal to the stage kind: any stage accepts any method. One dict maps a
method to the function that applies it; adding a method is one config class and one function.

Artifacts stay plain: a LoRA/DoRA stage saves the *merged* model at the stage folder's root (so
``from_pretrained`` and the next stage load it like any model, and a next stage's reference is
exactly this stage's model: DESIGN.md decision 4) and the adapter alone under ``adapter/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from rlft.config import Strict


class FullTuning(Strict):
    """Every parameter trains."""

    method: Literal["full"] = "full"


class LoraTuning(Strict):
    """LoRA (Hu et al., 2021) or DoRA (Liu et al., 2024) adapters through `peft`."""

    method: Literal["lora", "dora"] = "lora"  # dora: weight-decomposed LoRA (magnitude + direction)
    r: int = Field(default=16, gt=0)  # adapter rank: higher = more capacity and memory
    alpha: float = 32  # scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rslora)
    dropout: float = Field(default=0.05, ge=0, lt=1)  # dropout on the adapter's input
    target_modules: str | list[str] = (
        "all-linear"  # module names to adapt; all-linear = every linear but the head
    )
    use_rslora: bool = False  # rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski, 2023)
    modules_to_save: list[str] | None = None  # modules trained fully beside the adapters (e.g. a score head)


TuningConfig = Annotated[FullTuning | LoraTuning, Field(discriminator="method")]


def apply_full(model: Any, cfg: FullTuning, *, task_type: str) -> Any:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def apply_lora(model: Any, cfg: LoraTuning, *, task_type: str) -> Any:
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.method == "dora",
        modules_to_save=cfg.modules_to_save,
        task_type=task_type,
    )
    return get_peft_model(model, peft_cfg)


APPLY = {"full": apply_full, "lora": apply_lora, "dora": apply_lora}


def apply_tuning(model: Any, cfg: FullTuning | LoraTuning, *, task_type: str = "CAUSAL_LM") -> Any:
    """Apply a tuning strategy; returns the model to train (a PeftModel for adapter methods)."""
    return APPLY[cfg.method](model, cfg, task_type=task_type)


def count_parameters(model: Any) -> dict[str, int | float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_fraction": round(trainable / max(total, 1), 6)}


def save_model(model: Any, tokenizer: Any, out_dir: Path) -> dict[str, Any]:
    """Save a trained model as a plain HF folder; adapter methods also keep the adapter in adapter/."""
    from peft import PeftModel

    out_dir = Path(out_dir)
    saved: dict[str, Any] = {"merged": False}
    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir / "adapter")
        tokenizer.save_pretrained(out_dir / "adapter")
        model = model.merge_and_unload()
        saved = {"merged": True, "adapter": "adapter/"}
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return saved
