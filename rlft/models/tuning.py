"""Tuning strategies: which parameters of a stage's model train, and how its artifact is saved.

``tuning:`` is orthogonal to the stage kind: any stage that trains a model accepts any method
(DESIGN.md decision 8). One dict maps a method to the function that applies it; adding a method
is one config class and one function.

    method          what trains                                     artifact root      adapter/
    full            every parameter                                 the model          -
    freeze          chosen blocks and modules (+ gradual unfreezing) the model          -
    lora | dora     low-rank adapters on the linear layers (peft)   merged model       the adapter
    adapter         (IA)^3 rescaling vectors (peft)                 merged model       the adapter
    prompt_tuning   virtual input embeddings (peft)                 the frozen base    the prompt (kept)
    prefix_tuning   per-layer virtual keys and values (peft)        the frozen base    the prefix (kept)

Artifacts stay plain: a method whose update can be folded into the weights is *merged* at the
stage folder's root, so ``from_pretrained`` and the next stage load it like any model, and a next
stage's reference is exactly this stage's model (DESIGN.md decision 4). Prompt and prefix tuning
cannot merge (their virtual tokens are extra inputs, not a weight update): the root holds the
frozen base and ``adapter/`` the PEFT prompt, which ``rlft.models.loading.load_causal_lm``
re-attaches whenever the folder is loaded as a starting model (``{from: STAGE}`` or a path).
``from_pretrained`` on such a folder alone gives the base without its prompt. On a reward
model (a sequence classifier) the root also holds the trained score head, which is a weight.
peft's own forward and generate are wrong for these methods under transformers 5; the models
get rlft's (``rlft.models.prompt_learning``) wherever they are made or loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from rlft.config import Strict
from rlft.errors import ConfigError

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"  # the PEFT folder inside a stage artifact
# Output heads a model for a task type gets fresh; they train under every method (peft: modules_to_save).
TASK_HEADS = {"SEQ_CLS": ("score", "classifier"), "TOKEN_CLS": ("score", "classifier")}
PROMPT_METHODS = ("prompt_tuning", "prefix_tuning")  # what peft calls prompt learning: never merged


class FullTuning(Strict):
    """Every parameter trains."""

    method: Literal["full"] = Field("full", description="every parameter trains")


class FreezeTuning(Strict):
    """Layer-wise fine-tuning: only chosen transformer blocks and modules train; the rest is frozen.

    Blocks are the model's stack of transformer layers, found as its largest ``nn.ModuleList``
    (``model.layers`` in Llama). Module names match as peft's ``target_modules`` lists do: a
    pattern matches a module whose full name is the pattern or ends with ``.pattern`` (``norm``
    is Llama's final norm, not ``input_layernorm``). A fresh task head (a reward model's
    ``score``) always trains. With tied embeddings ``lm_head`` is the input embedding matrix, so
    naming it needs ``train_embeddings: true`` too (an error says so).

    Gradual unfreezing (Howard & Ruder, 2018, ULMFiT, sec. 3.3 "Gradual unfreezing"): with
    ``unfreeze_every: K``, the frozen blocks start training one at a time from the top down,
    one more every K optimizer steps, until every block trains (ULMFiT unfreezes one layer per
    epoch; here the period is in steps). The embeddings stay as ``train_embeddings`` says.
    """

    method: Literal["freeze"] = Field(
        "freeze", description="layer-wise: chosen blocks and modules train, the rest is frozen"
    )
    last_n_blocks: int = Field(
        0, ge=0, description="train the last N transformer blocks (nearest the output): more = more capacity"
    )
    blocks: list[int] = Field(
        [], description="also train these block indices (negative counts from the end: -1 is the last)"
    )
    modules: list[str] = Field([], description="also train these modules by name, e.g. [lm_head, norm]")
    train_embeddings: bool = Field(False, description="train the input embeddings too (frozen unless on)")
    unfreeze_every: int | None = Field(
        None,
        gt=0,
        description="gradual unfreezing (ULMFiT): one more block trains every K steps, top down; None: off",
    )

    @model_validator(mode="after")
    def _something_trains(self) -> FreezeTuning:
        if not (self.last_n_blocks or self.blocks or self.modules or self.train_embeddings):
            raise ValueError(
                "nothing would train at step 0: set last_n_blocks, blocks, modules or train_embeddings"
            )
        return self


class LoraTuning(Strict):
    """LoRA (Hu et al., 2021) or DoRA (Liu et al., 2024) adapters through `peft`."""

    method: Literal["lora", "dora"] = Field(
        "lora", description="lora: low-rank adapters; dora: weight-decomposed LoRA (magnitude + direction)"
    )
    r: int = Field(16, gt=0, description="adapter rank: higher = more capacity and memory")
    alpha: float = Field(
        32, description="scaling numerator: the update is scaled by alpha / r (alpha / sqrt(r) with rslora)"
    )
    dropout: float = Field(
        0.05, ge=0, lt=1, description="dropout on the adapter's input: higher regularises more"
    )
    target_modules: str | list[str] = Field(
        "all-linear", description="module names to adapt; all-linear = every linear layer but the head"
    )
    use_rslora: bool = Field(
        False, description="rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski, 2023): for high ranks"
    )
    modules_to_save: list[str] | None = Field(
        None, description="modules trained fully beside the adapters (e.g. a score head)"
    )


class AdapterTuning(Strict):
    """Lightweight inserted adapters: (IA)^3 through `peft` (Liu et al., 2022, "Few-Shot
    Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning", sec. 3.3).

    (IA)^3 learns one vector per adapted module that rescales its activations: the keys and
    values of attention and the input of the feed-forward's down projection, element-wise.
    It starts as the identity (vectors of ones) and trains ~0.01-0.1% of the parameters.

    Why (IA)^3 and not a Houlsby (2019) / Pfeiffer (2021) bottleneck: peft 0.21 has no bottleneck
    adapter, and a bottleneck (down-project, non-linearity, up-project) cannot be folded into the
    weights. Its artifact would need rlft's own code to load, would not be a plain Hugging Face
    model (DESIGN.md decision 5), and `rlft export --merge` could not produce one. (IA)^3 merges
    exactly (a rescaling is a weight update), so its artifact is a plain model like LoRA's.
    `type` names the adapter so that another kind can be added beside it.
    """

    method: Literal["adapter"] = Field("adapter", description="inserted adapters that merge: (IA)^3 vectors")
    type: Literal["ia3"] = Field(
        "ia3", description="the adapter kind: (IA)^3, the inserted adapter peft has that merges"
    )
    target_modules: str | list[str] | None = Field(
        None, description="modules rescaled; None: peft's default (Llama: k, v, down)"
    )
    feedforward_modules: str | list[str] | None = Field(
        None, description="of those, the ones rescaled at their input; None: peft's default"
    )
    modules_to_save: list[str] | None = Field(None, description="modules trained fully beside the adapters")


class PromptTuning(Strict):
    """Prompt tuning (Lester et al., 2021): learned embeddings of `num_virtual_tokens` tokens are
    put in front of every input; the model itself is frozen.

    Initialisation follows the paper's finding (sec. 3.2, fig. 3b) that vocabulary-based starts beat
    random ones: the embeddings of `init_text`'s tokens (repeated or cut to fit), else of tokens
    sampled from the vocabulary. Generation only: peft feeds a classifier the prompt as input
    embeddings, where a reward model's score head cannot find the last real token of a padded row.

    Unlike LoRA (B = 0) and (IA)^3 (ones), a prompt is not a no-op at step 0: the model starts
    near, not at, the stage's starting model (a DPO stage's step-0 margins are not 0; its
    reference stays the starting model, DESIGN.md decision 4). The same holds for prefix tuning.
    """

    method: Literal["prompt_tuning"] = Field(
        "prompt_tuning", description="learned input embeddings in front of every input; the model is frozen"
    )
    num_virtual_tokens: int = Field(
        16, gt=0, description="learned tokens: more = more capacity, longer inputs"
    )
    init_text: str | None = Field(
        None, description="start from this text's token embeddings; None: sampled vocabulary tokens"
    )


class PrefixTuning(Strict):
    """Prefix tuning (Li & Liang, 2021): learned keys and values of `num_virtual_tokens` positions
    in every attention layer; the model itself is frozen.

    Initialised with the keys and values the model computes for real tokens (the paper's finding,
    in its intrinsic evaluation, that initialising with activations of real words beats random starts): `init_text`'s tokens
    (repeated or cut to fit), else tokens sampled from the vocabulary. With `init_text`, the
    untrained prefix is exactly that text put in front of every input. The MLP
    reparametrisation of the paper (its sec. 4.3) is not used: peft saves only its output, so a
    later stage could not continue training it. Generation only (peft refuses prefixes on
    sequence classifiers).
    """

    method: Literal["prefix_tuning"] = Field(
        "prefix_tuning", description="learned keys and values in every attention layer; the model is frozen"
    )
    num_virtual_tokens: int = Field(16, gt=0, description="prefix positions per layer: more = more capacity")
    init_text: str | None = Field(
        None, description="start from the keys/values of this text; None: sampled vocabulary tokens"
    )


AnyTuning = FullTuning | FreezeTuning | LoraTuning | AdapterTuning | PromptTuning | PrefixTuning
TuningConfig = Annotated[AnyTuning, Field(discriminator="method")]


# ---------------------------------------------------------------------------------------------
# Applying a method
# ---------------------------------------------------------------------------------------------


def apply_full(model: Any, cfg: FullTuning, *, task_type: str, tokenizer: Any) -> Any:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def apply_freeze(model: Any, cfg: FreezeTuning, *, task_type: str, tokenizer: Any) -> Any:
    """Freeze everything, then unfreeze the chosen blocks, modules, embeddings and task head.

    Blocks that gradual unfreezing will open later are left trainable here, on purpose: the
    trainer builds its optimizer from the parameters that require grad when training starts,
    so they must be in it. `GradualUnfreezing` freezes them again when training begins and
    opens them on schedule (see `tuning_callbacks`).
    """
    plan = freeze_plan(model, cfg, task_type=task_type)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in plan["modules"]:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    if cfg.train_embeddings:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(True)
    for i in plan["blocks"] + plan["later"]:
        for p in plan["block_list"][i].parameters():
            p.requires_grad_(True)
    for head in TASK_HEADS.get(task_type, ()):  # a fresh task head always trains
        module = getattr(_base(model), head, None)
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(True)
    return model


def apply_lora(model: Any, cfg: LoraTuning, *, task_type: str, tokenizer: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    _refuse_stacking(model, cfg)
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


def apply_adapter(model: Any, cfg: AdapterTuning, *, task_type: str, tokenizer: Any) -> Any:
    from peft import IA3Config, get_peft_model

    _refuse_stacking(model, cfg)
    peft_cfg = IA3Config(
        target_modules=cfg.target_modules,
        feedforward_modules=cfg.feedforward_modules,
        modules_to_save=cfg.modules_to_save,
        task_type=task_type,
    )
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:  # unknown architecture: peft has no default target modules for it
        raise ConfigError(
            f"tuning (adapter, ia3): {e}; set tuning.target_modules and feedforward_modules"
        ) from None


def apply_prompt(model: Any, cfg: PromptTuning | PrefixTuning, *, task_type: str, tokenizer: Any) -> Any:
    """Prompt or prefix tuning; on a model that already carries a prompt of the same kind, train that one."""
    from peft import PeftModel, PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, get_peft_model

    from rlft.models.prompt_learning import fix_prompt_learning

    if task_type not in ("CAUSAL_LM", "SEQ_CLS"):
        raise ConfigError(
            f"tuning.method {cfg.method}: works on causal LMs and sequence classifiers only (not {task_type}); "
            f"use one of: {', '.join(m for m in APPLY if m not in PROMPT_METHODS)}"
        )
    if isinstance(model, PeftModel):  # the starting artifact's own prompt, re-attached at load
        kept = model.active_peft_config
        if kept.peft_type.value.lower() != cfg.method or kept.num_virtual_tokens != cfg.num_virtual_tokens:
            raise ConfigError(
                f"tuning: the starting model carries a {kept.peft_type.value.lower()} prompt of "
                f"{kept.num_virtual_tokens} tokens; peft holds one prompt per model, so this stage can train that "
                f"prompt ({{method: {kept.peft_type.value.lower()}, num_virtual_tokens: {kept.num_virtual_tokens}}}), "
                "or everything (full), or chosen modules (freeze)"
            )
        heads = TASK_HEADS.get(task_type, ())
        for name, p in model.named_parameters():
            p.requires_grad_("prompt_encoder" in name or any(f".{h}.modules_to_save." in name for h in heads))
        return fix_prompt_learning(model)

    if cfg.method == "prompt_tuning":
        peft_cfg = PromptTuningConfig(
            task_type=task_type,
            num_virtual_tokens=cfg.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.RANDOM,  # replaced just below
        )
    else:
        peft_cfg = PrefixTuningConfig(task_type=task_type, num_virtual_tokens=cfg.num_virtual_tokens)
    token_ids = _init_token_ids(cfg, model, tokenizer)
    if cfg.method == "prefix_tuning":
        init = _prefix_activations(model, token_ids)  # (P, L * 2 * H_kv * D)
    else:
        init = model.get_input_embeddings()(token_ids).detach().float()  # (P, hidden)
    model = get_peft_model(model, peft_cfg)
    with _no_grad():
        model.prompt_encoder[model.active_adapter].embedding.weight.copy_(init)
    return fix_prompt_learning(model)


APPLY = {
    "full": apply_full,
    "freeze": apply_freeze,
    "lora": apply_lora,
    "dora": apply_lora,
    "adapter": apply_adapter,
    "prompt_tuning": apply_prompt,
    "prefix_tuning": apply_prompt,
}


def apply_tuning(model: Any, cfg: AnyTuning, *, task_type: str = "CAUSAL_LM", tokenizer: Any = None) -> Any:
    """Apply a tuning strategy; returns the model to train (a PeftModel for the peft methods).

    `task_type` is peft's: CAUSAL_LM for policies, SEQ_CLS for reward models, TOKEN_CLS for
    per-token value heads. `tokenizer` is needed by prompt and prefix tuning's `init_text`.
    A model loaded from a prompt/prefix artifact arrives as a PeftModel carrying its prompt:
    `full` and `freeze` train (parts of) base and prompt together; the same prompt method
    continues training the prompt; LoRA/DoRA/adapter refuse (peft holds one kind per model).
    """
    return APPLY[cfg.method](model, cfg, task_type=task_type, tokenizer=tokenizer)


def gradual_unfreezing(model: Any, cfg: AnyTuning, *, log=logger.info) -> GradualUnfreezing | None:
    """The gradual-unfreezing schedule of `tuning: {method: freeze, unfreeze_every: K}` (logged), else None.
    A TRL stage applies it through its trainer callback; rlft's own loops call `apply(step)`."""
    if cfg.method != "freeze" or cfg.unfreeze_every is None:
        return None
    schedule = GradualUnfreezing.from_config(model, cfg)
    log(schedule.describe())
    return schedule


def tuning_callbacks(model: Any, cfg: AnyTuning, *, log=logger.info) -> list[Any]:
    """Trainer callbacks a method needs (gradual unfreezing), to add to the stage's trainer."""
    schedule = gradual_unfreezing(model, cfg, log=log)
    return [schedule.callback()] if schedule is not None else []


def tuning_trainer_defaults(cfg: AnyTuning) -> dict[str, Any]:
    """Trainer settings a method needs, as defaults under the stage's own `trainer:` keys.

    Gradual unfreezing changes which parameters get gradients after DDP has been built, so DDP
    must look for unused parameters (it otherwise waits for their gradients and fails).
    """
    if cfg.method == "freeze" and cfg.unfreeze_every is not None:
        return {"ddp_find_unused_parameters": True}
    return {}


def count_parameters(model: Any) -> dict[str, int | float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "trainable_fraction": round(trainable / max(total, 1), 6)}


def describe_parameters(cfg: AnyTuning, params: dict[str, Any]) -> str:
    """One log line: `tuning: lora: 1,234 of 567,890 parameters train (0.22%)`."""
    return (
        f"tuning: {cfg.method}: {params['trainable']:,} of {params['total']:,} parameters train "
        f"({100 * params['trainable_fraction']:.2f}%)"
    )


# ---------------------------------------------------------------------------------------------
# Saving and re-attaching
# ---------------------------------------------------------------------------------------------


def save_model(model: Any, tokenizer: Any, out_dir: Path) -> dict[str, Any]:
    """Save a trained model as a plain HF folder; peft methods also keep the adapter in adapter/.

    Mergeable adapters are merged into the root model (in place: `model` then computes with the
    merged weights). Prompt and prefix tuning keep their base at the root and the prompt in
    adapter/, re-attached by `attach_kept_adapter` when the folder is loaded.
    Returns what was saved: {"merged", "adapter", "peft"} (peft type, lower case) for peft models.
    """
    from peft import PeftModel

    out_dir = Path(out_dir)
    saved: dict[str, Any] = {"merged": False}
    if isinstance(model, PeftModel):
        model.save_pretrained(out_dir / ADAPTER_DIR)
        tokenizer.save_pretrained(out_dir / ADAPTER_DIR)
        peft_type = model.active_peft_config.peft_type.value.lower()
        if model.active_peft_config.is_prompt_learning:
            state_dict = _folded_heads(model.get_base_model().state_dict(), model.active_adapter)
            model.get_base_model().save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)
            return {"merged": False, "adapter": f"{ADAPTER_DIR}/", "peft": peft_type}
        model = model.merge_and_unload()
        saved = {"merged": True, "adapter": f"{ADAPTER_DIR}/", "peft": peft_type}
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return saved


def _folded_heads(state_dict: dict[str, Any], adapter: str) -> dict[str, Any]:
    """A prompt-learning model's base weights with each trained task head (peft keeps it as
    `score.modules_to_save.<adapter>.weight` beside `score.original_module.weight`) in the head's
    own place, so that the root loads alone with the trained head."""
    trained = f".modules_to_save.{adapter}."
    out = {}
    for key, value in state_dict.items():
        if ".original_module." in key or (".modules_to_save." in key and trained not in key):
            continue
        out[key.replace(trained, ".")] = value
    return out


def model_to_run(model: Any) -> Any:
    """The model to generate or score with after `save_model`: the merged model, or base + kept prompt."""
    from peft import PeftModel

    if isinstance(model, PeftModel) and not model.active_peft_config.is_prompt_learning:
        return model.get_base_model()
    return model


def kept_adapter(folder: str | Path) -> Path | None:
    """The adapter/ of an artifact that keeps its adapter unmerged (prompt/prefix tuning), else None."""
    from reward_models.prompt import kept_prompt

    return kept_prompt(folder)


def attach_kept_adapter(model: Any, folder: str | Path) -> Any:
    """Put an artifact's kept prompt back on its base model (a no-op for merged artifacts).

    peft loads a prompt frozen (it refuses `is_trainable` for prompt learning); in that mode it
    uses the stored embedding as is, which is still differentiable: `apply_tuning` then decides
    what trains.
    """
    adapter = kept_adapter(folder)
    if adapter is None:
        return model
    from peft import PeftModel

    from rlft.models.prompt_learning import fix_prompt_learning

    return fix_prompt_learning(PeftModel.from_pretrained(model, adapter))


# ---------------------------------------------------------------------------------------------
# Layer-wise freezing and gradual unfreezing
# ---------------------------------------------------------------------------------------------


def transformer_blocks(model: Any) -> tuple[str, Any]:
    """(name, ModuleList) of the model's transformer blocks: its largest ModuleList by parameters."""
    import torch

    lists = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) > 0 and "prompt_encoder" not in name
    ]
    if not lists:
        raise ConfigError(
            "tuning.method freeze: this model has no stack of transformer blocks (no ModuleList)"
        )
    return max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))


def freeze_plan(model: Any, cfg: FreezeTuning, *, task_type: str = "CAUSAL_LM") -> dict[str, Any]:
    """What `freeze` trains: block indices now and later (top first), and module names."""
    list_name, block_list = transformer_blocks(model)
    n = len(block_list)
    chosen = set(range(n - min(cfg.last_n_blocks, n), n))
    for i in cfg.blocks:
        if not -n <= i < n:
            raise ConfigError(
                f"tuning.blocks: block {i} does not exist ({list_name} has {n} blocks: 0..{n - 1})"
            )
        chosen.add(i % n)
    later = [i for i in reversed(range(n)) if i not in chosen] if cfg.unfreeze_every else []
    names = [name for name, _ in model.named_modules() if name]
    modules = []
    for pattern in cfg.modules:
        found = [name for name in names if name == pattern or name.endswith("." + pattern)]
        if not found:
            top = sorted({name.rsplit(".", 1)[-1] for name in names if not name.startswith(list_name + ".")})
            raise ConfigError(
                f"tuning.modules: no module named '{pattern}' (outside the blocks: {', '.join(top)})"
            )
        modules += found
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    for name in modules:
        if not cfg.train_embeddings and any(
            id(p) in embeddings for p in model.get_submodule(name).parameters()
        ):
            raise ConfigError(
                f"tuning.modules: '{name}' shares its weight with the input embeddings (tied embeddings), so "
                "training it trains them too; say so with train_embeddings: true, or leave it out"
            )
    return {"blocks": sorted(chosen), "later": later, "modules": modules, "block_list": block_list}


class GradualUnfreezing:
    """Open frozen blocks one at a time, top down, every `every` optimizer steps (ULMFiT).

    `order[k]` starts training once `(k + 1) * every` optimizer steps are done. Its parameters
    are already in the optimizer (see `apply_freeze`); while frozen they get no gradient, and
    AdamW skips a parameter without one (no update, no weight decay, no state), so a block's
    weights stay exactly as they were until its turn. `apply(step)` depends only on the step,
    so a resumed run freezes and opens the same blocks.
    """

    def __init__(self, blocks: list[Any], order: list[int], every: int):
        self.blocks = blocks  # the ModuleList of transformer blocks
        self.order = order  # block indices, in the order they open
        self.every = every

    @classmethod
    def from_config(cls, model: Any, cfg: FreezeTuning) -> GradualUnfreezing:
        plan = freeze_plan(model, cfg)
        return cls(plan["block_list"], plan["later"], cfg.unfreeze_every)

    def opens_at(self, index: int) -> int:
        """The optimizer step after which block `index` trains."""
        return (self.order.index(index) + 1) * self.every

    def apply(self, step: int) -> None:
        for k, i in enumerate(self.order):
            for p in self.blocks[i].parameters():
                p.requires_grad_(step >= (k + 1) * self.every)

    def describe(self) -> str:
        steps = ", ".join(f"block {i} at step {self.opens_at(i)}" for i in self.order) or "none left"
        return f"gradual unfreezing (every {self.every} steps): {steps}"

    def callback(self) -> Any:
        from transformers import TrainerCallback

        schedule = self

        class UnfreezeCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                schedule.apply(state.global_step)

            def on_step_end(self, args, state, control, **kwargs):
                schedule.apply(state.global_step)

        return UnfreezeCallback()


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _refuse_stacking(model: Any, cfg: Any) -> None:
    from peft import PeftModel

    if isinstance(model, PeftModel):
        kept = model.active_peft_config.peft_type.value.lower()
        raise ConfigError(
            f"tuning.method {cfg.method}: the starting model carries a {kept} prompt (a prompt/prefix artifact is "
            f"kept unmerged) and peft cannot stack {cfg.method} on it; use full, freeze or {kept} here"
        )


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _init_token_ids(cfg: PromptTuning | PrefixTuning, model: Any, tokenizer: Any) -> Any:
    """Token ids the virtual tokens start from: init_text's (repeated or cut to fit) or sampled ones. (P,)"""
    import torch

    n = cfg.num_virtual_tokens
    device = model.get_input_embeddings().weight.device
    if cfg.init_text is None:
        return torch.randint(0, model.get_input_embeddings().num_embeddings, (n,), device=device)
    if tokenizer is None:
        raise ConfigError(
            f"tuning.init_text: the stage must pass its tokenizer to apply_tuning ({cfg.method})"
        )
    ids = tokenizer(cfg.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError("tuning.init_text: the text has no tokens")
    ids = (ids * (n // len(ids) + 1))[:n]
    return torch.tensor(ids, device=device)


def _prefix_activations(model: Any, token_ids: Any) -> Any:
    """The keys and values `model` computes for `token_ids`, laid out as peft's prefix embedding.

    peft reads its prefix embedding (P, L * 2 * H_kv * D) as view(P, L * 2, H_kv, D), where row
    2l holds layer l's keys and row 2l + 1 its values. The cached keys already carry their
    rotary position (0..P-1), as they would if the text were really in front of the input.
    """
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        cache = model(input_ids=token_ids[None], use_cache=True).past_key_values
    model.train(was_training)
    per_layer = []
    for layer in cache.layers:  # keys/values: (1, H_kv, P, D)
        per_layer += [layer.keys[0].transpose(0, 1), layer.values[0].transpose(0, 1)]  # (P, H_kv, D)
    return torch.stack(per_layer, dim=1).flatten(1).float()  # (P, L * 2 * H_kv * D)


def _no_grad():
    import torch

    return torch.no_grad()
