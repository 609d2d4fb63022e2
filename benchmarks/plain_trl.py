"""The plain TRL script that rlft's SFT, reward, DPO and GRPO stages are measured against (benchmarks/wrapper.py).

    python benchmarks/plain_trl.py --kind sft --model MODEL_DIR --train FILE.jsonl \
        --settings SETTINGS.json --out OUT_DIR

What a user would write without rlft: load the model folder and its tokenizer, read the JSONL with
`datasets`, build TRL's config from SETTINGS.json (the settings rlft gave its own trainer config,
read from the rlft stage's stage.json `info.trainer_settings`, so both train under the same
values), train, save. It imports nothing from rlft (GRPO's reward is the quickstart's verifier,
`reward_models.tasks.uppercase_copy`, a plain function TRL takes as it is: the user's code). Prints one JSON line: the seconds of the
imports, of the set-up (model, data, trainer), of `trainer.train()` (TRL's `train_runtime`) and of
the save, and the last logged loss.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("sft", "reward", "dpo", "grpo"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--settings", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import datasets
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    imported = time.perf_counter()
    settings = json.loads(open(args.settings).read())
    set_seed(settings.get("seed", 42))  # before the model: a reward model's new score head is drawn from it
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    train = datasets.load_dataset("json", data_files=args.train, split="train")
    if args.kind == "sft":
        model = AutoModelForCausalLM.from_pretrained(args.model)
        config = SFTConfig(output_dir=args.out, **settings)
        trainer = SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer)
    elif args.kind == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        config = RewardConfig(output_dir=args.out, **settings)
        trainer = RewardTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer)
    elif args.kind == "dpo":
        model = AutoModelForCausalLM.from_pretrained(args.model)
        config = DPOConfig(output_dir=args.out, **settings)
        trainer = DPOTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer)
    else:
        from trl import GRPOConfig, GRPOTrainer

        from reward_models.tasks import uppercase_copy

        model = AutoModelForCausalLM.from_pretrained(args.model)
        config = GRPOConfig(output_dir=args.out, **settings)
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[uppercase_copy],
            args=config,
            train_dataset=train.select_columns(["prompt"]),
            processing_class=tokenizer,
        )
    ready = time.perf_counter()
    output = trainer.train()
    trained = time.perf_counter()
    trainer.save_model(args.out)
    saved = time.perf_counter()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(
        "RESULT "
        + json.dumps(
            {
                "imports": imported - START,
                "setup": ready - imported,
                "train_call": trained - ready,
                "train_runtime": output.metrics["train_runtime"],
                "save": saved - trained,
                "steps": trainer.state.global_step,
                "last_loss": losses[-1] if losses else None,
            }
        )
    )


if __name__ == "__main__":
    main()
