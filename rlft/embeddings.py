"""Text embeddings from a language model: pooling, the InfoNCE loss, retrieval metrics, `rlft.embed`.

`kind: contrastive` in representation mode trains a model so that texts which say the same thing
(an `anchor` and its `positive`) get close vectors and other texts far ones. A text's vector is a
pooling of the model's last hidden states: of the decoder under a causal LM's head (what a pipeline
passes on), or of an encoder (`AutoModel`). This module holds the pure parts (pooling, the loss,
the metrics), the small module the stage trains (`Embedder`) with its collator and trainer (built
on transformers' Trainer, imported only when one is made), and `embed`, which reads a trained
artifact back. The stage writes `embedding.json` beside the weights so that `embed` pools exactly
as training did.

Letters: B rows in a batch, T tokens, H hidden size, N texts, G text groups per row (anchor,
positive and, when the data has it, a hard negative).
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rlft.errors import ConfigError

Tensor = torch.Tensor
EMBEDDING_FILE = "embedding.json"  # pooling and tokenisation settings, in a representation artifact


# --- pooling ----------------------------------------------------------------------------------


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """The mean of the hidden states of the real tokens: (B, T, H), (B, T) -> (B, H). Padding
    (mask 0) counts for nothing, whichever side it is on."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def last_token_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """The hidden state of each row's last real token: (B, T, H), (B, T) -> (B, H). In a causal LM
    it is the only position that has read the whole text. Left or right padding both work."""
    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    last = (mask.long() * positions).argmax(-1)  # (B,) index of the last 1 in each row
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


POOLING = {"mean": mean_pool, "last_token": last_token_pool}


# --- loss and metrics -------------------------------------------------------------------------


def info_nce(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float | Tensor,
    symmetric: bool = False,
) -> Tensor:
    """InfoNCE with in-batch negatives on cosine similarities, a scalar (van den Oord et al., 2018,
    "Representation Learning with Contrastive Predictive Coding", eq. 4).

    anchors, positives: (B, H), row i of one the pair of row i of the other; negatives: (B, H) hard
    negatives, one per anchor, or None. Each anchor i classifies its positive among all B positives
    (and all B hard negatives), logits cos(a_i, c_j) / τ:

        one-way (SimCSE, Gao et al., 2021, eq. 1 and 5):  CE(a -> [p; n])
        symmetric (CLIP, Radford et al., 2021, fig. 3):   (CE(a -> [p; n]) + CE(p -> a)) / 2

    In the symmetric loss the way back is positives over anchors only: a hard negative belongs to
    one anchor and has no anchor of its own. A small τ (0.05 in SimCSE) sharpens the softmax.
    """
    a = F.normalize(anchors, dim=-1)  # (B, H)
    p = F.normalize(positives, dim=-1)  # (B, H)
    candidates = p if negatives is None else torch.cat([p, F.normalize(negatives, dim=-1)])  # (B or 2B, H)
    labels = torch.arange(a.shape[0], device=a.device)  # (B,) anchor i's positive is candidate i
    loss = F.cross_entropy(a @ candidates.T / temperature, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(p @ a.T / temperature, labels)) / 2
    return loss


def retrieval_metrics(queries: Tensor, keys: Tensor) -> dict[str, float]:
    """Accuracy@1 and mean reciprocal rank of query i finding key i among all N keys, by cosine.

    queries, keys: (N, H). A key that ties with the right one ranks above it (a model whose vectors
    all collapse to one scores 1/N, not 1), so the numbers never flatter.
    """
    sims = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T  # (N, N)
    right = sims.diagonal().unsqueeze(1)  # (N, 1)
    ranks = (sims >= right).sum(1).float()  # (N,) 1 = the right key comes first
    return {"accuracy@1": (ranks == 1).float().mean().item(), "mrr": (1 / ranks).mean().item()}


# --- the model --------------------------------------------------------------------------------


def backbone(model: Any) -> Any:
    """The module whose `last_hidden_state` is pooled: a causal LM's decoder (`model.model` in
    Llama), an encoder itself; through a peft wrapper (LoRA layers live inside those modules)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.get_base_model()
    return model.base_model  # transformers: the model under the task head, or the model itself


class Embedder(torch.nn.Module):
    """What representation mode trains: token ids -> pooled last hidden states, plus the InfoNCE
    logit scale 1/τ (a parameter when the temperature is learned, CLIP's way, else a constant).

    Wraps the whole model (causal LM, peft model or encoder) so that a distributed wrapper (DDP,
    DeepSpeed) sees every weight, and saving the model afterwards needs nothing else. A causal LM's
    head is not on the path to the loss: when it is not tied to the input embeddings it is frozen,
    or DDP would wait forever for its gradients.
    """

    def __init__(
        self, model: Any, *, pooling: str, temperature: float = 1.0, learn_temperature: bool = False
    ):
        super().__init__()
        self.model = model
        self.pooling = pooling
        log_scale = torch.tensor(-math.log(temperature))
        if learn_temperature:
            self.log_scale = torch.nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        head, inputs = model.get_output_embeddings(), model.get_input_embeddings()
        if head is not None and head.weight is not inputs.weight:
            head.requires_grad_(False)
        forward = inspect.signature(backbone(model).forward).parameters
        self.extra = {"use_cache": False} if "use_cache" in forward else {}  # a decoder: no KV cache

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> dict[str, Tensor]:
        out = backbone(self.model)(input_ids=input_ids, attention_mask=attention_mask, **self.extra)
        pooled = POOLING[self.pooling](out.last_hidden_state, attention_mask)  # (B, H)
        return {"embeddings": pooled, "scale": self.log_scale.exp().clamp(max=100.0)}  # τ >= 0.01, as CLIP


def tokenize(tokenizer: Any, texts: Sequence[str], *, max_length: int | None, append_eos: bool) -> Any:
    """Token ids and attention mask, padded: (N, T) each. With `append_eos` every text ends in the eos
    token (a causal LM's last-token pooling then reads a state that has seen the whole text)."""
    limit = None if max_length is None else max_length - int(append_eos)
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=limit is not None, max_length=limit)
    rows = [row + [tokenizer.eos_token_id] if append_eos else row for row in ids["input_ids"]]
    return tokenizer.pad({"input_ids": rows}, return_tensors="pt")


@torch.no_grad()
def encode(
    embedder: Embedder,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int | None,
    append_eos: bool,
    batch_size: int = 64,
    normalize: bool = True,
) -> Tensor:
    """The pooled vectors of `texts`, (N, H) float32 on the CPU; L2-normalised unless `normalize` is False."""
    was_training = embedder.training
    embedder.eval()
    device = next(embedder.parameters()).device
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenize(
                tokenizer, texts[start : start + batch_size], max_length=max_length, append_eos=append_eos
            )
            pooled = embedder(batch["input_ids"].to(device), batch["attention_mask"].to(device))["embeddings"]
            out.append(pooled.float().cpu())
    finally:
        embedder.train(was_training)
    vectors = torch.cat(out) if out else torch.zeros(0, 0)
    return F.normalize(vectors, dim=-1) if normalize else vectors


# --- training ---------------------------------------------------------------------------------


def shared_aliases(state_dict: dict[str, Tensor]) -> set[str]:
    """The names in a state dict whose tensor is one an earlier name already holds (tied weights)."""
    seen, aliases = set(), set()
    for key, tensor in state_dict.items():
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if where in seen:
            aliases.add(key)
        seen.add(where)
    return aliases


class PairCollator:
    """Rows {anchor, positive[, negative]} -> input_ids and attention_mask (G, B, T), one padding for all."""

    def __init__(self, tokenizer: Any, *, max_length: int | None, append_eos: bool):
        self.tokenizer, self.max_length, self.append_eos = tokenizer, max_length, append_eos

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        groups = [g for g in ("anchor", "positive", "negative") if g in rows[0]]
        texts = [row[g] for g in groups for row in rows]  # anchors, then positives, then negatives
        batch = tokenize(self.tokenizer, texts, max_length=self.max_length, append_eos=self.append_eos)
        return {k: batch[k].view(len(groups), len(rows), -1) for k in ("input_ids", "attention_mask")}


def contrastive_trainer(*, symmetric: bool, measure: Any, **kwargs: Any) -> Any:
    """transformers' Trainer with InfoNCE as its loss (checkpoints, resume, DDP/DeepSpeed come with
    it). `measure(embedder) -> metrics` runs at every evaluation: retrieval on the eval rows."""
    from transformers import Trainer

    class ContrastiveTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids, mask = inputs["input_ids"], inputs["attention_mask"]  # (G, B, T)
            groups, rows, tokens = ids.shape
            out = model(input_ids=ids.view(-1, tokens), attention_mask=mask.view(-1, tokens))
            vectors = out["embeddings"].view(groups, rows, -1)  # (G, B, H): anchors, positives[, negatives]
            negatives = vectors[2] if groups == 3 else None
            self.scale = out["scale"].detach()
            loss = info_nce(
                vectors[0], vectors[1], negatives, temperature=1 / out["scale"], symmetric=symmetric
            )
            return (loss, out) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            with torch.no_grad():
                loss = self.compute_loss(model, self._prepare_inputs(inputs))
            return loss.detach(), None, None

        def evaluate(self, *args, **kw):
            metrics = super().evaluate(*args, **kw)
            if measure is not None:
                # every process measures (a sharded model needs them all); the main one logs
                found = measure(self.accelerator.unwrap_model(self.model))
                self.log(found)
                metrics.update(found)
            return metrics

        def _save(self, output_dir=None, state_dict=None):
            # A checkpoint of the Embedder is its state dict in one safetensors file, which refuses
            # tensors that share memory (a tied LM head): each is saved once, under its first name.
            state_dict = self.model.state_dict() if state_dict is None else state_dict
            aliases = shared_aliases(state_dict)
            super()._save(output_dir, state_dict={k: v for k, v in state_dict.items() if k not in aliases})

        def _issue_warnings_after_load(self, load_result):
            # Resuming loads the checkpoint non-strictly: the aliases left out are filled by the tie.
            aliases = shared_aliases(self.model.state_dict())
            missing = [k for k in load_result.missing_keys if k not in aliases]
            super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

        def log(self, logs, start_time=None):
            if "loss" in logs and hasattr(self, "scale"):
                logs["temperature"] = 1 / self.scale.item()
            super().log(logs, start_time)

    return ContrastiveTrainer(**kwargs)


# --- the artifact -----------------------------------------------------------------------------


def write_embedding_config(folder: Path, settings: dict[str, Any]) -> None:
    (Path(folder) / EMBEDDING_FILE).write_text(json.dumps(settings, indent=2) + "\n")


def read_embedding_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / EMBEDDING_FILE
    if not path.is_file():
        raise ConfigError(
            f"{folder}: no {EMBEDDING_FILE}: not a model trained by `kind: contrastive` with `mode: representation`"
        )
    return json.loads(path.read_text())


def embed(
    model_dir: str | Path, texts: Sequence[str], *, batch_size: int = 64, normalize: bool = True
) -> Tensor:
    """The vectors of `texts` from a representation-mode artifact: a torch tensor (N, H), float32, CPU.

    L2-normalised by default (a dot product is then the cosine similarity the model was trained
    on); `normalize=False` gives the raw pooled hidden states. Pooling, eos handling and max length
    are the stage's, read from the artifact's embedding.json. The folder's model is loaded with
    `AutoModel` (for a causal LM: its decoder, without the head), in eval mode, on the CPU.

        vectors = rlft.embed("runs/embeddings/embed", ["a b c", "A, B and C"])
        similarity = vectors[0] @ vectors[1]
    """
    from transformers import AutoModel, AutoTokenizer

    folder = Path(model_dir)
    settings = read_embedding_config(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32)
    return encode(
        Embedder(model, pooling=settings["pooling"]),
        tokenizer,
        list(texts),
        max_length=settings["max_length"],
        append_eos=settings["append_eos"],
        batch_size=batch_size,
        normalize=normalize,
    )
