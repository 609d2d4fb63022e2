"""Tiny real models: a small Llama and a byte-level BPE tokenizer trained on your text.

Tests and the quickstart use these instead of a hub model. The result is a normal Hugging Face
folder (``config.json``, ``model.safetensors``, ``tokenizer.json`` with the chat template), so
everything downstream loads it through the same ``from_pretrained`` path as any other model.

The tokenizer has no BOS token on purpose: chat templates and trainers each like to add one, and
a doubled BOS is a classic silent bug. Its special tokens are::

    <|pad|>  padding          <|end|>  end of a turn (eos; generation stops here)
    <|system|>  <|user|>  <|assistant|>   role tags of the chat template, one token each

Building is deterministic: the same texts and settings give a byte-identical ``tokenizer.json``
and identical weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlft.config import TinySpec
from rlft.models.chat_template import DEFAULT_CHAT_TEMPLATE

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, *ROLE_TOKENS)  # ids 0..4, in this order


def build_tiny(spec: TinySpec, out_dir: str | os.PathLike, *, base_dir: str | os.PathLike = ".") -> Path:
    """Build the model ``spec`` describes into ``out_dir``; relative text paths resolve against ``base_dir``."""
    paths = [Path(base_dir) / p for p in spec.tokenizer_texts]
    return build_tiny_from_texts(
        _strings_from_jsonl(paths),
        out_dir,
        hidden_size=spec.hidden_size,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        vocab_size=spec.vocab_size,
        max_position_embeddings=spec.max_position_embeddings,
        seed=spec.seed,
    )


def build_tiny_from_texts(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    vocab_size: int = 512,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on ``texts``, initialise a Llama around it, and save both to ``out_dir``.

    The folder is written atomically: built in a temp dir beside ``out_dir``, then renamed over it.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")

    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, max_length=max_position_embeddings)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)

    config = LlamaConfig(
        vocab_size=len(tokenizer),  # BPE may stop short of the target when the text is small
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        dtype="float32",
    )
    # Seed a private copy of the RNG, so building a model does not disturb the caller's randomness.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=None)

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # Whichever process builds it must write it: once torch.distributed is initialised,
        # transformers 5 writes nothing on ranks above 0 (see should_save_on_this_rank).
        model.should_save_on_this_rank = lambda is_main_process: True
        model.save_pretrained(tmp)  # transformers 5 always writes safetensors
        tokenizer.save_pretrained(tmp)
        if out.exists():  # os.replace cannot rename over a non-empty folder
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 512, max_length: int = 256):
    """A byte-level BPE tokenizer trained on ``texts``, as a ``PreTrainedTokenizerFast``.

    Byte-level means every string encodes (unknown characters fall back to bytes), and decoding
    gives back the exact text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size {vocab_size} is below the 256-byte alphabet plus {len(SPECIAL_TOKENS)} special tokens"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        extra_special_tokens=list(ROLE_TOKENS),
        chat_template=DEFAULT_CHAT_TEMPLATE,
        padding_side="right",  # generation code switches to left padding itself
        model_max_length=max_length,
    )


def _strings_from_jsonl(paths: Iterable[Path]) -> Iterator[str]:
    """Every string in every row of each JSONL file, found recursively inside lists and dicts."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield from _strings(json.loads(line))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
