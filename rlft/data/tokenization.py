"""Tokenisation checks: what the trainer will see, looked at before it trains.

```python
checks = tokenization_checks(data.train, tokenizer, format=data.format, style=data.report["style"],
                             max_length=512)
for line in log_lines(checks):  # warnings start "WARNING ": rlft.stages.common logs them as warnings
    ctx.log(line)
```

Each row is rendered the way TRL 1.16's trainers render it: conversational fields through the
chat template (the prompt alone with the generation prompt, then prompt + answer), standard
fields as plain text (prompt + completion, concatenated), and tokenised as TRL tokenises them
(`apply_chat_template(tokenize=True)`, i.e. the rendered text without added special tokens, for
conversational rows; `tokenizer(text)` with special tokens for standard rows). One departure:
TRL's SFT appends the EOS token to standard text and completions that lack it; lengths here do
not count it (one token at most). Then:

- **renders**: the first `n_render` rows as text, for the stage log;
- **doubled BOS**: rows whose rendered text, tokenised *with* special tokens, starts with the
  BOS token twice: the template wrote one and the tokenizer added another. TRL avoids this, but
  any code that renders text and then tokenises it (a reward model scoring text, a custom
  collator) does not (https://huggingface.co/blog/qgallouedec/gotchas-in-tokenizer-behavior#7);
- **prefix mismatch**: rows whose tokenised prompt is not a prefix of the tokenised prompt +
  answer (for preference pairs: of either answer). TRL then starts the answer where they
  diverge, and the model trains on a context it never sees at inference. `prefix_mismatch_text`
  counts those where the rendered *text* already differs (the template renders the prompt
  differently alone); the rest are tokens merging across the boundary;
- **lengths**: token-length percentiles (p50/p90/p99/max) per field and of the whole sequence
  (for a pair: the longer of prompt + chosen and prompt + rejected; for contrastive rows: the
  longest text, each encoded alone). A conversational answer's length is the tokens the full
  render adds after the prompt, role tags included;
- **truncation**: rows whose sequence is longer than `max_length`, and rows whose prompt alone
  fills it (TRL drops those: no answer token would be left).

Big datasets are checked on a seeded sample of `sample_rows` rows (the result says so).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlft.data.formats import CONVERSATIONAL, FORMATS, TEXT_FIELDS, common_prefix, to_explicit_prompt
from rlft.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

SAMPLE_ROWS = 2000  # rows checked at most; bigger datasets are sampled (seeded)
RENDER_CHARS = 2000  # a rendered example longer than this is cut in the result
PERCENTILES = (50, 90, 99)
SEQUENCE = "sequence"  # the length key of the whole rendered sequence


def tokenization_checks(
    ds: Dataset,
    tokenizer: Any,
    *,
    format: str,
    style: str,
    max_length: int | None = None,
    n_render: int = 3,
    sample_rows: int = SAMPLE_ROWS,
    seed: int = 0,
) -> dict:
    """Render, tokenise and check the rows of `ds` (see the module doc). JSON-serialisable result:

    rows, rows_checked, sampled, seed; bos_token, eos_token; renders (first n_render rows);
    doubled_bos; prefix_checked, prefix_mismatch, prefix_mismatch_text, prefix_mismatch_example;
    lengths {field: {p50, p90, p99, max, mean}} (field "sequence": the whole sequence);
    max_length, over_max_length, prompt_over_max_length.
    """
    return measure_tokens(
        ds,
        tokenizer,
        format=format,
        style=style,
        max_length=max_length,
        n_render=n_render,
        sample_rows=sample_rows,
        seed=seed,
    )[0]


def measure_tokens(
    ds: Dataset,
    tokenizer: Any,
    *,
    format: str,
    style: str,
    max_length: int | None = None,
    n_render: int = 3,
    sample_rows: int = SAMPLE_ROWS,
    seed: int = 0,
) -> tuple[dict, dict[str, list[int]]]:
    """`tokenization_checks`, plus the token length of every checked row per field (for histograms)."""
    if format not in RENDERERS:
        raise ValueError(f"format must be one of {', '.join(RENDERERS)}, got {format!r}")
    if style == CONVERSATIONAL and not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "the tokenizer has no chat template, and this data is conversational (lists of messages): give the "
            "tokenizer a chat template (rlft.models.loading.load_tokenizer gives rlft's default to one without)"
        )
    indices = sample_indices(len(ds), limit=sample_rows, seed=seed)
    rows = _rows(ds, indices, format=format)
    first = _rows(ds, list(range(min(n_render, len(ds)))), format=format)
    render = RENDERERS[format]

    rendered = [render(row, tokenizer, style) for row in rows]
    tokens = _Tokens(tokenizer)
    lengths: dict[str, list[int]] = {}
    doubled, mismatch, mismatch_text, prompt_over, over = 0, 0, 0, 0, 0
    example = None
    for index, r in zip(indices, rendered, strict=True):
        sequence_ids = [tokens.ids(text, special=r.special) for text in r.sequences.values()]
        for name, text in r.fields.items():
            lengths.setdefault(name, []).append(len(tokens.ids(text, special=r.special)))
        prompt_ids = tokens.ids(r.prompt, special=r.special) if r.prompt is not None else None
        for name, ids in zip(r.sequences, sequence_ids, strict=True):
            if prompt_ids is not None:  # the answer is what the full sequence adds after the shared prefix
                lengths.setdefault(name, []).append(len(ids) - common_prefix(prompt_ids, ids))
        lengths.setdefault(SEQUENCE, []).append(max(len(ids) for ids in sequence_ids))
        if prompt_ids is not None:
            lengths.setdefault("prompt", []).append(len(prompt_ids))
            shared = min(common_prefix(prompt_ids, ids) for ids in sequence_ids)
            if shared < len(prompt_ids):
                mismatch += 1
                if example is None:
                    example = {"row": index + 1, "prompt_end_left_out": tokenizer.decode(prompt_ids[shared:])}
                if not all(text.startswith(r.prompt) for text in r.sequences.values()):
                    mismatch_text += 1
            if max_length is not None and len(prompt_ids) >= max_length:
                prompt_over += 1
        if tokens.bos is not None and any(
            tokens.ids(text, special=True)[:2] == [tokens.bos, tokens.bos] for text in r.sequences.values()
        ):
            doubled += 1
        if max_length is not None and lengths[SEQUENCE][-1] > max_length:
            over += 1

    has_prompt = format in ("prompt_completion", "unpaired_preference", "preference", "implicit_preference")
    order = [*_fields_of(format, rows), SEQUENCE]
    result = {
        "rows": len(ds),
        "rows_checked": len(indices),
        "sampled": len(indices) < len(ds),
        "seed": seed,
        "format": format,
        "style": style,
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "renders": [
            {
                "row": i + 1,
                **{name: _cut(text) for name, text in render(row, tokenizer, style).sequences.items()},
            }
            for i, row in enumerate(first)
        ],
        "doubled_bos": doubled,
        "prefix_checked": len(indices) if has_prompt else 0,
        "prefix_mismatch": mismatch,
        "prefix_mismatch_text": mismatch_text,
        "prefix_mismatch_example": example,
        "lengths": {name: length_stats(lengths[name]) for name in order if name in lengths},
        "max_length": max_length,
        "over_max_length": over if max_length is not None else None,
        "prompt_over_max_length": prompt_over if max_length is not None and has_prompt else None,
    }
    return result, {name: lengths[name] for name in order if name in lengths}


def log_lines(result: Mapping) -> list[str]:
    """The checks as short lines for the stage log, warnings first-worded `WARNING`."""
    checked = result["rows_checked"]
    scope = (
        f"a seeded sample of {checked} of {result['rows']} rows (seed {result['seed']})"
        if result["sampled"]
        else f"all {checked} rows"
    )
    lines = [
        f"tokenization: {result['format']} ({result['style']}), checked {scope}; "
        f"bos {result['bos_token']!r}, eos {result['eos_token']!r}"
    ]
    stats = ", ".join(
        f"{name} {s['p50']}/{s['p90']}/{s['p99']}/{s['max']}" for name, s in result["lengths"].items()
    )
    lines.append(f"tokens p50/p90/p99/max: {stats}")
    prefix = (
        f"{result['prefix_mismatch']} of {result['prefix_checked']} rows"
        if result["prefix_checked"]
        else "n/a"
    )
    bos = (
        f"{result['doubled_bos']} of {checked} rows"
        if result["bos_token"] is not None
        else "n/a (no BOS token)"
    )
    lines.append(f"doubled BOS: {bos}; prompt not a token prefix of prompt + answer: {prefix}")
    if result["doubled_bos"]:
        lines.append(
            f"WARNING doubled BOS: {result['doubled_bos']} of {checked} rows start with {result['bos_token']!r} "
            "twice when the rendered text is tokenised with special tokens (the chat template writes one, the "
            "tokenizer adds one); tokenise rendered text with add_special_tokens=False"
        )
    if result["prefix_mismatch"]:
        example = result["prefix_mismatch_example"]
        lines.append(
            f"WARNING prefix mismatch: in {result['prefix_mismatch']} of {result['prefix_checked']} rows the "
            f"tokenised prompt is not a prefix of the tokenised prompt + answer ({result['prefix_mismatch_text']} "
            "of them because the rendered text differs, the rest because tokens merge across the boundary); "
            f"e.g. row {example['row']} loses the prompt's end {example['prompt_end_left_out']!r}"
        )
    if result["max_length"] is not None:
        line = (
            f"max_length {result['max_length']}: {result['over_max_length']} of {checked} rows are longer "
            f"and will be truncated"
        )
        if result["prompt_over_max_length"]:
            line += f"; {result['prompt_over_max_length']} prompts alone fill it (TRL drops those rows)"
        lines.append(("WARNING " if result["over_max_length"] else "") + line)
    for render in result["renders"]:
        for name, text in render.items():
            if name != "row":
                lines.append(f"render row {render['row']} {name}: {text!r}")
    return lines


# --- sampling and statistics --------------------------------------------------------------------


def sample_indices(n: int, *, limit: int = SAMPLE_ROWS, seed: int = 0) -> list[int]:
    """All row indices when n <= limit, else `limit` of them drawn without replacement (seeded), sorted."""
    if n <= limit:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def length_stats(values: Sequence[float]) -> dict:
    """p50/p90/p99 (nearest rank: always a value that occurs), max and mean of `values`."""
    ordered = sorted(values)
    if not ordered:
        return {f"p{p}": None for p in PERCENTILES} | {"max": None, "mean": None}
    stats = {f"p{p}": ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] for p in PERCENTILES}
    return stats | {"max": ordered[-1], "mean": round(sum(ordered) / len(ordered), 1)}


# --- rendering ------------------------------------------------------------------------------------


@dataclass
class Rendered:
    """One row as text: its prompt alone (None: no prompt), its full sequences, and fields whose
    length is their own encoding (language modelling, contrastive)."""

    prompt: str | None
    sequences: dict[str, str]  # name -> full text the model trains on
    fields: dict[str, str] = field(default_factory=dict)  # name -> text measured alone
    special: bool = True  # tokenise with special tokens (standard rows, as TRL does)


def _template(tokenizer: Any, messages: list, *, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _render_language_modeling(row: Mapping, tokenizer: Any, style: str) -> Rendered:
    if "messages" in row:
        text = _template(tokenizer, row["messages"])
        return Rendered(None, {"messages": text}, fields={"messages": text}, special=False)
    return Rendered(None, {"text": row["text"]}, fields={"text": row["text"]})


def _render_answers(row: Mapping, tokenizer: Any, style: str, answers: Sequence[str]) -> Rendered:
    """A prompt and one or more answers to it (prompt_completion, unpaired_preference, preference)."""
    if style == CONVERSATIONAL:
        prompt = _template(tokenizer, row["prompt"], generation_prompt=True)
        full = {a: _template(tokenizer, row["prompt"] + row[a]) for a in answers}
        return Rendered(prompt, full, special=False)
    return Rendered(row["prompt"], {a: row["prompt"] + row[a] for a in answers})


def _render_contrastive(row: Mapping, tokenizer: Any, style: str) -> Rendered:
    texts = {f: row[f] for f in ("anchor", "positive", "negative") if row.get(f) is not None}
    return Rendered(None, texts, fields=dict(texts))


def _render_prompt(row: Mapping, tokenizer: Any, style: str) -> Rendered:
    """A prompt alone (prompt-only data), as a generating model sees it: with the generation prompt."""
    if style == CONVERSATIONAL:
        text = _template(tokenizer, row["prompt"], generation_prompt=True)
        return Rendered(None, {"prompt": text}, fields={"prompt": text}, special=False)
    return Rendered(None, {"prompt": row["prompt"]}, fields={"prompt": row["prompt"]})


RENDERERS: dict[str, Callable[[Mapping, Any, str], Rendered]] = {
    "language_modeling": _render_language_modeling,
    "prompt_completion": lambda row, tok, style: _render_answers(row, tok, style, ["completion"]),
    "unpaired_preference": lambda row, tok, style: _render_answers(row, tok, style, ["completion"]),
    "preference": lambda row, tok, style: _render_answers(row, tok, style, ["chosen", "rejected"]),
    "implicit_preference": lambda row, tok, style: _render_answers(row, tok, style, ["chosen", "rejected"]),
    "contrastive": _render_contrastive,
    "prompt_only": _render_prompt,
}


def _rows(ds: Dataset, indices: list[int], *, format: str) -> list[dict]:
    """The text fields of these rows as dicts; implicit preference rows get their prompt extracted."""
    columns = [c for c in ds.column_names if c in TEXT_FIELDS]
    if format == "language_modeling":  # TRL reads messages when both are present
        columns = ["messages"] if "messages" in columns else ["text"]
    part = ds.select_columns(columns).select(indices)
    if format == "implicit_preference":
        part = to_explicit_prompt(part)
    return part.to_list()


def _fields_of(format: str, rows: list[dict]) -> list[str]:
    """The format's text fields in table order, as measured (messages or text for language modelling)."""
    present = set(rows[0]) if rows else set()
    format = "preference" if format == "implicit_preference" else format  # the prompt was extracted
    fields = [f for s in FORMATS[format] for f in s if f in TEXT_FIELDS]
    return list(dict.fromkeys(f for f in fields if f in present))


class _Tokens:
    """Token ids of a text, cached (the prompt of a pair is tokenised once)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.bos = tokenizer.bos_token_id
        self._cache: dict[tuple[str, bool], list[int]] = {}

    def ids(self, text: str, *, special: bool) -> list[int]:
        key = (text, special)
        if key not in self._cache:
            self._cache[key] = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        return self._cache[key]


def _cut(text: str) -> str:
    if len(text) <= RENDER_CHARS:
        return text
    return text[:RENDER_CHARS] + f"... ({len(text) - RENDER_CHARS} more characters)"
