"""The model card (README.md) `rlft export` writes: front matter for the Hugging Face Hub, then
where the model comes from, what it measured, and how to use it.

Front matter (the Hub's model card metadata):

    base_model      the Hub model the first stage started from; left out when that was a local folder,
                    a package or a tiny model (the Hub refuses a card whose base_model is not a Hub id)
    library_name    transformers
    pipeline_tag    text-generation, or text-classification for a reward model
    tags            rlft, the stage's kind, its tuning method
    datasets        the SHA-256 content hashes stage.json records for the data files (train and
                    eval) of every stage in the lineage (the data is not published with the model;
                    the hashes say which files it was)

The lineage follows `model: {from: STAGE}` back through the run folder the stage folder sits in
(each earlier stage's stage.json); a folder without stage.json is described as a plain model.
Only file names appear, never absolute paths: a card is meant to be published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlft.artifacts import library_versions, read_json

PIPELINE_TAGS = {"CAUSAL_LM": "text-generation", "SEQ_CLS": "text-classification"}


def stage_lineage(stage_dir: str | Path) -> list[dict[str, Any]]:
    """stage.json records from the first stage to `stage_dir`'s, following `model: {from: ...}` through
    the folder's run folder. [] when the folder has no stage.json. A named stage whose folder is gone is
    kept as {"stage": NAME, "missing": True}; one re-run since its successor started from it gets
    "replaced": True (its folder holds another artifact than the one its successor trained on)."""
    stage_dir = Path(stage_dir)
    record = read_json(stage_dir / "stage.json")
    if not record:
        return []
    chain = [record]
    seen = {record.get("stage")}
    while True:
        parent = _source(chain[0]).get("from")
        if not parent or parent in seen:
            return chain
        seen.add(parent)
        earlier = read_json(stage_dir.parent / parent / "stage.json")
        if earlier is None:
            return [{"stage": parent, "missing": True}, *chain]
        recorded = (chain[0].get("inputs") or {}).get("model")
        if recorded and earlier.get("artifact_hash") and recorded != earlier["artifact_hash"]:
            earlier = {**earlier, "replaced": True}
        chain.insert(0, earlier)


def hub_base_model(chain: list[dict[str, Any]]) -> str | None:
    """The Hub model the lineage started from, or None (local folder, package, tiny model, unknown)."""
    if not chain or chain[0].get("missing"):
        return None
    recorded = (chain[0].get("inputs") or {}).get("model") or ""
    if not recorded.startswith("hub:"):
        return None  # a hub-looking name that resolved to a local folder is hashed as a folder
    return recorded.removeprefix("hub:").rsplit("@", 1)[0]


def data_hashes(chain: list[dict[str, Any]]) -> list[str]:
    """Content hashes of the data files (train, eval) of every stage of the lineage, first stage first, once each."""
    hashes: list[str] = []
    for record in chain:
        for digest in ((record.get("inputs") or {}).get("data") or {}).values():
            if digest not in hashes:
                hashes.append(digest)
    return hashes


def model_card(
    chain: list[dict[str, Any]],
    *,
    name: str,
    task: str,
    load: str,
    checks: list[str],
    base_model: str | None = None,
    method: str | None = None,
) -> str:
    """README.md text: YAML front matter, then lineage, evaluation numbers, loading and intended use.

    chain: `stage_lineage` of the exported folder ([] for a folder that is no rlft stage).
    task: CAUSAL_LM or SEQ_CLS. load: a Python snippet that loads the export. checks: lines about
    the export (the merge check). base_model, method: what is known without a stage.json (a bare
    PEFT folder's base and type).
    """
    import yaml

    version = library_versions().get("rlft", "(version unknown)")
    last = chain[-1] if chain else {}
    kind = last.get("kind")
    method = ((last.get("config") or {}).get("tuning") or {}).get("method") or method
    base_model = hub_base_model(chain) or base_model
    meta: dict[str, Any] = {}
    if base_model:
        meta["base_model"] = base_model
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = PIPELINE_TAGS.get(task, "text-generation")
    meta["tags"] = [t for t in ("rlft", kind, method) if t]
    hashes = data_hashes(chain)
    if hashes:
        meta["datasets"] = hashes

    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {name}", ""]
    if chain:
        details = ", ".join(t for t in (kind, method) if t)
        what = f"stage `{last.get('stage') or '?'}`" + (f" ({details})" if details else "")
        trained = (last.get("versions") or {}).get("rlft", version)
        lines += [f"Trained with rlft {trained}: {what}, the last of {len(chain)} stage(s) below.", ""]
        lines += _lineage_section(chain)
        lines += _metrics_section(last)
    else:
        lines += [
            f"Exported with rlft {version} from a folder without stage.json: its training history is not known "
            "to rlft.",
            "",
        ]
    lines += ["## How to load", "", "```python", load, "```", ""]
    if checks:
        lines += ["## Export checks", "", *[f"- {c}" for c in checks], ""]
    lines += _use_section(chain, task=task)
    return "\n".join(lines)


def _lineage_section(chain: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Lineage",
        "",
        f"Started from: {describe_source(_source(chain[0])) if not chain[0].get('missing') else 'unknown'}.",
        "",
        "| # | stage | kind | tuning | started from | data (sha256) | task reward | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, record in enumerate(chain, 1):
        if record.get("missing"):
            lines.append(
                f"| {i} | {record['stage']} | ? | ? | ? | its folder is gone from the run folder | - | - |"
            )
            continue
        config = record.get("config") or {}
        data = ", ".join(
            f"{Path(p).name} `{h[:12]}`" for p, h in ((record.get("inputs") or {}).get("data") or {}).items()
        )
        reward = (record.get("metrics") or {}).get("task_reward")
        stage = record.get("stage", "?") + (
            " (re-run since: its folder now holds another model)" if record.get("replaced") else ""
        )
        lines.append(
            f"| {i} | {stage} | {record.get('kind', '?')} | {(config.get('tuning') or {}).get('method', '-')} "
            f"| {describe_source(_source(record))} | {data or '-'} | {_number(reward)} | {_number(record.get('seconds'))} |"
        )
    return [*lines, ""]


def _metrics_section(record: dict[str, Any]) -> list[str]:
    metrics = {k: v for k, v in (record.get("metrics") or {}).items() if isinstance(v, int | float)}
    lines = ["## Evaluation", ""]
    if not metrics:
        return [*lines, "This stage recorded no metrics.", ""]
    lines += [
        f"The final metrics of stage `{record.get('stage')}`, as its stage.json records them:",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {_number(v)} |" for k, v in metrics.items()]
    prompts = (record.get("inputs") or {}).get("evaluate") or {}
    if "task_reward" in metrics and prompts:
        named = ", ".join(f"{Path(p).name} `{h[:12]}`" for p, h in prompts.items())
        lines += [
            "",
            f"task_reward: the mean verifiable reward of greedy completions to held-out prompts ({named}).",
        ]
    return [*lines, ""]


def _use_section(chain: list[dict[str, Any]], *, task: str) -> list[str]:
    what = "scores text (a reward model)" if task == "SEQ_CLS" else "generates text"
    names = sorted({Path(p).name for r in chain for p in ((r.get("inputs") or {}).get("data") or {})})
    trained = (
        f"was trained and evaluated by rlft on the data named above ({', '.join(names)}), identified by SHA-256 content "
        "hashes; the data is not published with it"
        if names
        else "was exported by rlft; the data it was trained on is not recorded here"
    )
    lines = [
        "## Intended use and limits",
        "",
        f"This model {what}. It {trained}. It is a research artifact: the numbers above are all that rlft "
        "measured, on its own held-out data, at training time. Evaluate it on your own task and data before "
        "any use. It inherits the limits and biases of its base model and of its training data, and it may "
        "produce wrong, harmful or nonsensical output.",
    ]
    if chain and (_source(chain[0]).get("tiny") is not None):
        lines += [
            "",
            "It grew from a tiny model built by rlft from the task's text: it is for tests and demos only.",
        ]
    return [*lines, ""]


def describe_source(source: dict[str, Any]) -> str:
    """A stage's `model:` source in a few words, without absolute paths."""
    if source.get("from"):
        return f"stage `{source['from']}`"
    if source.get("tiny"):
        tiny = source["tiny"]
        return (
            f"a tiny Llama built by rlft (hidden {tiny.get('hidden_size')}, {tiny.get('num_layers')} layers)"
        )
    if source.get("hub"):
        revision = f" @ {source['revision']}" if source.get("revision") else ""
        return f"`{source['hub']}`{revision}"
    if source.get("package"):
        gguf = f", GGUF file {source['gguf_file']}" if source.get("gguf_file") else ""
        return f"the weights of Python package `{source['package']}`{gguf}"
    if source.get("path"):
        return f"a local folder `{Path(source['path']).name}`"
    return "unknown"


def _source(record: dict[str, Any]) -> dict[str, Any]:
    source = (record.get("config") or {}).get("model") or {}
    if not isinstance(source, dict):
        return {}
    return {("from" if k == "from_" else k): v for k, v in source.items()}


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
