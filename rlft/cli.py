"""The `rlft` command. Imports stay light here: trl, torch and deepspeed load in the stage processes."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from rlft import __version__
from rlft.errors import RlftError
from rlft.log import LEVEL_ENV, LEVELS, setup_logging

DESCRIPTION = """\
rlft: align language models with a staged pipeline declared in one YAML file
(SFT -> reward model -> PPO / DPO), each stage in its own process, artifacts as
plain Hugging Face folders under runs/<pipeline>/<stage>/.

Start here:
  rlft quickstart                      train a tiny model from nothing, in minutes, on CPU
  rlft validate quickstart             a pipeline file, or one rlft ships by name
  rlft run quickstart
  rlft data inspect configs/data/quickstart/prefs_train.jsonl --format preference
  rlft config show dpo                 every key of a stage kind, with its default and what it does
"""

RUN_EPILOG = """\
Finished stages whose config and inputs are unchanged are skipped; a stage whose
earlier run died resumes from its last checkpoint. Examples:
  rlft run quickstart --only sft --force
  rlft run quickstart --set stages.sft.trainer.learning_rate=3e-4
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlft", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"rlft {__version__}")
    parser.add_argument(
        "--log-level",
        choices=LEVELS,
        help="what rlft logs, here and in every stage's process (default: $RLFT_LOG_LEVEL, else info); "
        "each stage's stage.log keeps debug lines whatever the level",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error in your input, show the traceback too (default: one line saying what to fix)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a pipeline file, stage by stage",
        description="Run the stages of a pipeline file in order, each in its own process.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("pipeline", help=PIPELINE_HELP)
    _run_options(run)
    run.add_argument("--from", dest="from_stage", metavar="STAGE", help="run this stage and every later one")

    sweep = sub.add_parser(
        "sweep",
        help="run a pipeline once per point of a grid and tabulate the final metrics",
        description=SWEEP_DESCRIPTION,
        epilog=SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("pipeline", help=PIPELINE_HELP)
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        required=True,
        metavar="KEY=[V1,V2]",
        help="a key and its values (a YAML list), e.g. 'stages.dpo.beta=[0.05,0.1,0.3]'; repeatable (product)",
    )
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value in every point (as in rlft run); repeatable",
    )
    sweep.add_argument(
        "--sweep-dir", type=Path, help="folder of the sweep (default: runs/<pipeline name>-sweep)"
    )
    sweep.add_argument("--force", action="store_true", help="re-run every stage of every point")
    sweep.add_argument(
        "--no-eval",
        action="store_true",
        help="do not evaluate the points (`rlft eval`) before the sweep's report (no reward-vs-KL plot then)",
    )
    sweep.add_argument(
        "--launch", metavar="NAME|PATH", help="accelerate config for every stage (as in rlft run)"
    )

    validate = sub.add_parser(
        "validate",
        help="check pipeline files without running anything",
        description=(
            "Check pipeline files: keys, types, stage references and trainer keys, and each stage against its "
            "launch config (known-bad combinations, each with its reason and source: rlft/launch_rules.py). "
            "Runs nothing."
        ),
    )
    validate.add_argument(
        "pipelines", nargs="+", help="pipeline YAML files, or names of shipped ones (quickstart)"
    )
    validate.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value as `rlft run --set` does (VALUE is parsed as YAML); repeatable",
    )
    validate.add_argument(
        "--launch",
        metavar="NAME|PATH",
        help="check every stage with this accelerate config (as rlft run --launch)",
    )

    quick = sub.add_parser(
        "quickstart",
        help="train a tiny model from nothing on a verifiable task (CPU, minutes)",
        description=(
            "Build a tiny model and tokenizer from the shipped task data, run the quickstart pipeline "
            "(configs/quickstart.yaml) and print the task reward of greedy generations before and after "
            "each stage. Same as `rlft run quickstart` (the pipeline file rlft ships: configs/quickstart.yaml in "
            "a clone)."
        ),
    )
    _run_options(quick)

    data = sub.add_parser(
        "data",
        help="look at data before training on it",
        description="Data tools. `rlft data inspect SOURCE` loads a data source as a stage would and reports on it.",
    )
    data.set_defaults(data_parser=data)
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    inspect = data_sub.add_parser(
        "inspect",
        help="report on a data source: format, invalid rows, lengths, duplicates, balance, tokenisation",
        description=INSPECT_DESCRIPTION,
        epilog=INSPECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument(
        "source",
        help="a .jsonl/.json/.csv/.parquet file, a glob, a save_to_disk folder or a hub dataset name",
    )
    inspect.add_argument(
        "--format",
        choices=INSPECT_FORMAT_CHOICES,
        help="accept only this format (preference includes an implicit prompt); default: detect any",
    )
    inspect.add_argument(
        "--field",
        dest="fields",
        action="append",
        default=[],
        metavar="CANONICAL=COLUMN",
        help="read your column as a canonical field, e.g. --field completion=answer; repeatable",
    )
    inspect.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="tokenizer folder or hub name: lengths in tokens and the tokenisation checks "
        "(default: lengths in characters, no checks)",
    )
    inspect.add_argument("--category", metavar="COLUMN", help="report the balance of this column's values")
    inspect.add_argument(
        "--max-length",
        type=int,
        metavar="N",
        help="count the rows longer than N tokens (the trainer's max_length); needs --tokenizer",
    )
    inspect.add_argument(
        "--out",
        type=Path,
        default=Path("data_report"),
        metavar="DIR",
        help="where data_report.json, data_lengths.png and rejects.jsonl go (default: ./data_report/)",
    )
    config = sub.add_parser(
        "config",
        help="the config reference: every key of a pipeline file and of each stage kind; the JSON Schema",
        description="Config reference. Every key, its type, default and description, read from the config "
        "classes themselves.",
        epilog=CONFIG_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config.set_defaults(config_parser=config)
    config_sub = config.add_subparsers(dest="config_command", metavar="CONFIG_COMMAND")
    show = config_sub.add_parser(
        "show",
        help="print every key of a stage kind (or of a pipeline file's top level) with its default and description",
        description=CONFIG_SHOW_DESCRIPTION,
        epilog=CONFIG_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument(
        "kind",
        nargs="?",
        metavar="KIND",
        help="a stage kind (sft, reward, dpo, kto, ppo, grpo, rloo, evaluate) or `pipeline`; "
        "none: the top-level keys and the kinds",
    )
    schema = config_sub.add_parser(
        "schema",
        help="write the JSON Schema of a pipeline file (for YAML editors)",
        description=CONFIG_SCHEMA_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    schema.add_argument("--out", type=Path, metavar="FILE", help="write it to FILE (default: print it)")

    evaluate = sub.add_parser(
        "eval",
        help="measure every policy stage of a finished run: task reward, RM score, win rate, KL",
        description=EVAL_DESCRIPTION,
        epilog=EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("run_dir", type=Path, help="a run folder (runs/<pipeline>)")
    evaluate.add_argument(
        "--stages", nargs="+", metavar="STAGE", help="only these stages (default: every policy stage)"
    )
    evaluate.add_argument(
        "--against",
        metavar="STAGE",
        help="the baseline of every stage's win rate and KL (default: the stage it started from)",
    )
    evaluate.add_argument(
        "--samples",
        type=int,
        default=4,
        metavar="N",
        help="seeded samples per prompt (default 4; 0: greedy only)",
    )
    evaluate.add_argument("--max-prompts", type=int, metavar="N", help="the first N held-out prompts only")
    evaluate.add_argument(
        "--seed", type=int, default=0, help="seeds the samples and the bootstrap (default 0)"
    )
    evaluate.add_argument(
        "--judge",
        metavar="MODEL",
        help="a pairwise LLM judge (a folder or hub name; default template and labels A/B), instead of "
        "the pipeline's evaluate.judge: adds judge_win_rate",
    )

    report = sub.add_parser(
        "report",
        help="one self-contained HTML page about one or more runs: lineage, curves, evaluation, reward vs KL",
        description=(
            "Write report.html (plots embedded, one file to attach or mail) and summary.md for the runs given: "
            "each stage's lineage, its curves from metrics.jsonl, the evaluation table of `rlft eval` with reward "
            "against KL across the runs' policy stages (several runs draw a frontier), samples side by side and "
            "the data reports. By default into the first run's folder."
        ),
    )
    report.add_argument(
        "run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run folders (runs/<pipeline>)"
    )
    report.add_argument(
        "--out", type=Path, metavar="FILE", help="where to write the page (default: RUN_DIR/report.html)"
    )

    export = sub.add_parser(
        "export",
        help="write a stage's model as a plain Hugging Face folder (adapters merged with --merge)",
        description=EXPORT_DESCRIPTION,
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument(
        "source", type=Path, help="a stage folder (runs/<pipeline>/<stage>) or a PEFT adapter folder"
    )
    export.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="new folder to write (must not exist or be empty)",
    )
    export.add_argument(
        "--merge",
        action="store_true",
        help="fold adapters into the weights: DIR loads with AutoModelForCausalLM.from_pretrained alone",
    )

    generate = sub.add_parser(
        "generate",
        help="a quick look: what a stage folder or an export generates for a prompt, or a small chat",
        description=GENERATE_DESCRIPTION,
        epilog=GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    generate.add_argument("folder", type=Path, help="a stage folder (runs/<pipeline>/<stage>) or an export")
    what = generate.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--prompt", metavar="TEXT", help="one user turn (through the chat template): print the answer"
    )
    what.add_argument(
        "--chat",
        action="store_true",
        help="read user turns from stdin, one a line, until an empty line or its end; answer each with the "
        "conversation so far",
    )
    generate.add_argument(
        "--raw", action="store_true", help="feed --prompt as plain text, without the chat template"
    )
    generate.add_argument("--system", metavar="TEXT", help="a system turn in front of the conversation")
    generate.add_argument(
        "--max-new-tokens", type=int, default=64, metavar="N", help="most tokens per answer (default: 64)"
    )
    generate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    generate.add_argument(
        "--temperature",
        type=float,
        metavar="T",
        help="with --sample: lower is more deterministic (default: 1.0)",
    )
    generate.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="with --sample: the same seed gives the same text (default: 0)",
    )
    return parser


EVAL_DESCRIPTION = """\
Measure every policy stage of a finished run on the pipeline's held-out prompts (its `evaluate:`
block): the verifier's mean reward on greedy completions and on seeded samples, the run's reward
model's mean score, the win rate against a baseline stage (the stage each one started from, or
--against; judged by the reward model, else the verifier; ties apart, a 95% bootstrap interval and
the length-controlled variant), with a pairwise LLM judge (evaluate.judge or --judge) the judge's win
rate against that baseline (both orders; a tie when they disagree), and the KL from that baseline on
the stage's own samples. Writes
RUN_DIR/eval.json and RUN_DIR/eval.csv and prints one table.
"""

EVAL_EPILOG = """\
Examples:
  rlft eval runs/quickstart
  rlft eval runs/quickstart --stages dpo ppo --against sft --samples 8
  rlft eval runs/quickstart --judge ~/models/SmolLM2-135M-Instruct
"""

GENERATE_DESCRIPTION = """\
Load a stage folder or an export as rlft does (a prompt- or prefix-tuned folder gets its learned prompt
back) and print what it generates: the answer to --prompt, or a chat read from stdin with --chat. A
prompt is a user turn rendered with the tokenizer's chat template (--raw: plain text). Greedy decoding
unless --sample. A reward model scores text instead: reward_models.RewardModel.
"""

GENERATE_EPILOG = """\
Examples:
  rlft generate runs/quickstart/dpo --prompt "shout: a b c"
  rlft generate models/quickstart-sft --prompt "shout: q r s t u" --sample --temperature 0.7 --seed 1
  printf 'shout: a b\\nshout: x y z\\n' | rlft generate runs/quickstart/ppo --chat
"""


EXPORT_DESCRIPTION = """\
Write the model of a finished stage as a folder that needs neither rlft nor the run folder:
weights (safetensors), config and tokenizer with its chat template, a generation_config.json and a
model card (README.md: Hugging Face metadata, the lineage of stages, the stage's metrics, intended
use). Only model files are copied: rlft's records (stage.json, metrics, logs, data reports, wandb/,
tensorboard/, ranks/) are left out.

With --merge the result is one plain model that loads with
transformers.AutoModelForCausalLM.from_pretrained(DIR) (a reward model: AutoModelForSequenceClassification).
LoRA, DoRA and (IA)^3 stages are stored merged already; a bare PEFT adapter folder is loaded onto its
base model and merged. Prompt and prefix tuning cannot be merged (their virtual tokens are inputs, not
weights): export them without --merge to get the base model plus the PEFT prompt in DIR/adapter.
A merged model is checked first: its logits must equal base + adapter (unmerged) on a few inputs and,
when the adapter is not zero, differ from the base model's; an export that fails is not written.
"""

EXPORT_EPILOG = """\
Examples:
  rlft export runs/quickstart/sft --merge --out models/quickstart-sft
  rlft export runs/quickstart/sft/adapter --merge --out models/sft-merged   # a PEFT folder onto its base
  rlft export runs/prompt/sft --out models/sft-prompt                       # prompt tuning: base + adapter/
"""


SWEEP_DESCRIPTION = """\
Run a pipeline once per point of a grid of config values, one after another, each in its own run
folder under runs/<pipeline>-sweep/<point>/, and write one table of the final metrics per point
(sweep.csv, sweep.json, printed). Stages a point shares with an earlier point (same config and
inputs) are hard-linked, not trained again; reference log-probs are cached for every point.
Keys are those of `rlft run --set`; `data.KEY` without a stage applies to every stage that trains
on preference data (reward, dpo, kto). Then, when the pipeline has an `evaluate:` block, every
finished point is evaluated (`rlft eval`; --no-eval skips it), and one report over all points is
written (report.html, summary.md in the sweep folder): reward against KL with the points' frontier.
"""

SWEEP_EPILOG = """\
Examples:
  rlft sweep quickstart --grid 'stages.dpo.beta=[0.05,0.1,0.3]'
  rlft sweep quickstart --grid 'stages.dpo.beta=[0.05,0.1,0.3]' --grid 'data.curate.flip_fraction=[0,0.2]'
  rlft sweep quickstart --grid 'stages.dpo.loss_type=[[sigmoid],[sigmoid,sft],[ipo]]'
"""

INSPECT_FORMAT_CHOICES = (
    "preference",
    "prompt_completion",
    "language_modeling",
    "unpaired_preference",
    "contrastive",
)

INSPECT_DESCRIPTION = """\
Load a data source as a training stage would (same loaders, field mapping and row checks) and
report: rows, format and fields, invalid rows (written to DIR/rejects.jsonl instead of stopping),
exact duplicates, length percentiles per field (tokens with --tokenizer, else characters), the
balance of a category column and, with --tokenizer, the tokenisation checks: the first rows as
the model sees them, doubled BOS tokens, prompts that are not a token prefix of prompt + answer,
and rows longer than --max-length. Writes DIR/data_report.json and DIR/data_lengths.png.
"""

INSPECT_EPILOG = """\
Examples:
  rlft data inspect configs/data/quickstart/prefs_train.jsonl --format preference
  rlft data inspect qa.csv --field prompt=question --field completion=answer
  rlft data inspect data/train.jsonl --tokenizer runs/quickstart/sft --max-length 256 --category source
"""


CONFIG_SHOW_DESCRIPTION = """\
Print every key of a stage kind: its type, default (as YAML writes it) and what it does, nested
keys flattened with dots (data.curate.dedup; tuning's keys per method), and the TRL config class
that the stage's `trainer:` section passes through to. Without KIND: a pipeline file's top-level
keys and the stage kinds.
"""

CONFIG_SCHEMA_DESCRIPTION = """\
Write the JSON Schema (draft 2020-12) of a pipeline file: YAML editors use it to check keys and
complete them. rlft ships it as configs/rlft.schema.json; point a pipeline file at it with this
first line (the YAML language server, e.g. VS Code's YAML extension, reads it):
  # yaml-language-server: $schema=rlft.schema.json
"""

CONFIG_EPILOG = """\
Examples:
  rlft config show                     the top-level keys and the stage kinds
  rlft config show dpo                 every key of a DPO stage
  rlft config show pipeline            every top-level key, nested ones included
  rlft config schema --out configs/rlft.schema.json
"""


PIPELINE_HELP = "pipeline YAML file, or the name of one rlft ships (quickstart, examples/smollm2_sft_lora)"


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", type=Path, help="run folder (default: runs/<pipeline name>)")
    p.add_argument(
        "--only", metavar="STAGE", help="run only this stage (the stages it starts from must be done)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. stages.sft.trainer.max_steps=50 (VALUE is parsed as YAML); repeatable",
    )
    p.add_argument("--force", action="store_true", help="re-run stages even when they are done")
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail a stage whose checkpoints may not fit in the free disk space (default: a warning)",
    )
    p.add_argument(
        "--launch",
        metavar="NAME|PATH",
        help="accelerate config for every stage, overriding the file's `launch:` (cpu_2proc, multi_gpu, zero2, zero3, "
        "zero3_offload, fsdp, or a path)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.log_level is not None:
            os.environ[LEVEL_ENV] = args.log_level  # the stage processes inherit it
        setup_logging()
        return COMMANDS[args.command](args)
    except RlftError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        if args.command in ("run", "sweep"):
            print(f"resume with: {resume_command(sys.argv[1:] if argv is None else argv)}", file=sys.stderr)
        return 130


def resume_command(argv: list[str]) -> str:
    """The command that goes on with an interrupted `rlft run`/`sweep`: the same one, less --force
    (which would start the finished stages over)."""
    return shlex.join(["rlft", *(a for a in argv if a != "--force")])


def cmd_run(args: argparse.Namespace) -> int:
    from rlft.api import Pipeline

    Pipeline.from_yaml(args.pipeline, overrides=args.overrides).run(
        run_dir=args.run_dir,
        only=args.only,
        from_stage=args.from_stage,
        force=args.force,
        launch=args.launch,
        strict=args.strict,
    )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from rlft.pipeline_file import parse_overrides
    from rlft.resources import find_pipeline_file
    from rlft.sweep import parse_grid, run_sweep

    run_sweep(
        find_pipeline_file(args.pipeline),
        parse_grid(args.grid),
        overrides=parse_overrides(args.overrides),
        sweep_dir=args.sweep_dir,
        force=args.force,
        launch=args.launch,
        evaluate=not args.no_eval,
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from rlft.api import Pipeline

    console = Console()
    for path in args.pipelines:
        pipeline = Pipeline.from_yaml(path, overrides=args.overrides).validate(launch=args.launch)
        table = Table(title=f"{path}: ok ({pipeline.name})", title_justify="left")
        for col in ("stage", "kind", "model", "tuning", "launch"):
            table.add_column(col)
        for s in pipeline.stages:
            tuning = getattr(s, "tuning", None)
            table.add_row(
                s.name,
                s.kind,
                s.model.describe() if s.model else "-",
                tuning.method if tuning else "-",
                args.launch or s.launch or "python -m",
            )
        console.print(table)
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from rlft import stage_server
    from rlft.api import Pipeline
    from rlft.resources import quickstart_config

    whole = args.only is None  # every stage is there to compare: evaluate, then one report
    overrides = list(args.overrides or []) + (["report=false"] if whole else [])
    pipeline = Pipeline.from_yaml(quickstart_config(), overrides=overrides)
    # One stage server for the stages and the evaluation after them: this process never imports torch
    with stage_server.serving():
        results = pipeline.run(
            run_dir=args.run_dir, only=args.only, force=args.force, launch=args.launch, strict=args.strict
        )
        if not results:
            return 0  # a rank other than 0 of an outer `accelerate launch`: rank 0 reports
        line = " -> ".join(
            f"{r['stage']} {r['task_reward']:.1%}" for r in results if r.get("task_reward") is not None
        )
        print(f"\nquickstart task reward (exact uppercase copies, greedy, held-out prompts): {line}")
        for r in results:
            if r.get("reward_accuracy") is not None:
                print(f"reward model '{r['stage']}': held-out pairwise accuracy {r['reward_accuracy']:.1%}")
            if r.get("kl") is not None:
                print(f"stage '{r['stage']}': final KL from its reference {r['kl']:.3f} nats per response")
        if not whole:
            return 0
        run_dir = args.run_dir or Path("runs") / pipeline.name
        return stage_server.call("rlft.cli:evaluate_and_report", run_dir=str(run_dir), samples=2)


def evaluate_and_report(run_dir: str, samples: int) -> int:
    """`rlft eval RUN_DIR --samples N`, its table printed, then `rlft report RUN_DIR` (rlft quickstart's end)."""
    from rlft.log import ensure_logging
    from rlft.report import write_report
    from rlft.run_evaluation import evaluate_run, print_table

    ensure_logging()  # its progress lines, as in the parent
    print_table(evaluate_run(Path(run_dir), samples=samples))
    print(f"report: {write_report([Path(run_dir)])}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command is None:
        args.data_parser.print_help()
        return 0
    return DATA_COMMANDS[args.data_command](args)


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rlft.data.inspect import inspect_data

    if args.max_length is not None and args.tokenizer is None:
        raise RlftError("--max-length counts tokens: give --tokenizer too")
    inspect_data(
        args.source,
        format=args.format,
        fields=parse_fields(args.fields),
        tokenizer=args.tokenizer,
        category=args.category,
        max_length=args.max_length,
        out_dir=args.out,
        console=Console(),
    )
    return 0


def parse_fields(items: list[str]) -> dict[str, str]:
    fields = {}
    for item in items:
        canonical, sep, column = item.partition("=")
        if not sep or not canonical or not column:
            raise RlftError(f"--field {item}: write CANONICAL=COLUMN, e.g. --field completion=answer")
        fields[canonical] = column
    return fields


def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command is None:
        args.config_parser.print_help()
        return 0
    return CONFIG_COMMANDS[args.config_command](args)


def cmd_config_show(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rlft.config_reference import show

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=200)  # into a file or a pipe: whole rows, not 80-column ones
    show(args.kind, console=console)
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    from rlft.config_reference import pipeline_schema_text

    text = pipeline_schema_text()
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rlft.config import JudgeConfig
    from rlft.run_evaluation import evaluate_run, print_table

    results = evaluate_run(
        args.run_dir,
        stages=args.stages,
        against=args.against,
        samples=args.samples,
        max_prompts=args.max_prompts,
        seed=args.seed,
        judge=JudgeConfig(model=_local_or_hub(args.judge)) if args.judge else None,
    )
    print_table(results)
    print(f"eval: {args.run_dir / 'eval.json'}, {args.run_dir / 'eval.csv'}")
    return 0


def _local_or_hub(name: str) -> str:
    """A folder given on the command line, made absolute (it is relative to the current directory, not to
    the pipeline file as a config's paths are); anything else as given (a hub name)."""
    folder = Path(name).expanduser()
    return str(folder.resolve()) if folder.exists() else name


def cmd_report(args: argparse.Namespace) -> int:
    from rlft.report import write_report

    print(f"report: {write_report(args.run_dirs, out=args.out)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from rlft.models.export import export_model

    print(export_model(args.source, args.out, merge=args.merge))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from rlft.models.generate import Decoding, chat, complete, load_for_generation

    if args.temperature is not None and not args.sample:
        raise RlftError("--temperature applies to sampling: add --sample")
    if args.temperature is not None and args.temperature <= 0:
        raise RlftError(
            f"--temperature {args.temperature}: must be above 0 (greedy decoding: leave out --sample)"
        )
    if args.raw and (args.chat or args.system):
        raise RlftError("--raw feeds --prompt as plain text: it goes with neither --chat nor --system")
    if args.max_new_tokens < 1:
        raise RlftError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    decoding = Decoding(
        max_new_tokens=args.max_new_tokens,
        sample=args.sample,
        temperature=args.temperature if args.temperature is not None else 1.0,
        seed=args.seed,
    )
    model, tokenizer = load_for_generation(args.folder)
    if args.prompt is not None:
        system = [{"role": "system", "content": args.system}] if args.system else []
        prompt = args.prompt if args.raw else [*system, {"role": "user", "content": args.prompt}]
        print(complete(model, tokenizer, prompt, decoding))
        return 0
    chat(
        model,
        tokenizer,
        _stdin_lines(prompt="you: " if sys.stdin.isatty() else None),
        lambda reply: print(f"assistant: {reply}", flush=True),
        decoding,
        system=args.system,
    )
    return 0


def _stdin_lines(*, prompt: str | None):
    """stdin's lines as they come (a terminal: after showing `prompt`), up to its end."""
    while True:
        if prompt is not None:
            print(prompt, end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        yield line


COMMANDS = {
    "run": cmd_run,
    "sweep": cmd_sweep,
    "validate": cmd_validate,
    "quickstart": cmd_quickstart,
    "data": cmd_data,
    "config": cmd_config,
    "export": cmd_export,
    "eval": cmd_eval,
    "report": cmd_report,
    "generate": cmd_generate,
}
DATA_COMMANDS = {"inspect": cmd_data_inspect}
CONFIG_COMMANDS = {"show": cmd_config_show, "schema": cmd_config_schema}

if __name__ == "__main__":
    sys.exit(main())
