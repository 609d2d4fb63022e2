"""The TRL 1.12.0 `PPOTrainer` run that rlft's `kind: ppo` stage is measured against (benchmarks/ppo_vs_trl.py).

    benchmarks/.venv-trl112/bin/python benchmarks/trl112_ppo.py --policy SFT_DIR --reward REWARD_DIR \
        --prompts PROMPTS.jsonl --settings SETTINGS.json --out OUT_DIR

Runs in its own virtualenv (torch 2.13.0, transformers 5.24.0, trl 1.12.0: the last TRL with a
PPOTrainer, in `trl.experimental.ppo`) and imports nothing from rlft. What a user of TRL 1.12 would
write: the SFT model as policy and (a separate copy) reference, the reward-stage artifact as reward
model and (a separate copy) value model, the prompts rendered with the chat template and its
generation prompt, PPOConfig from SETTINGS.json (benchmarks/ppo_vs_trl.py writes it from the same
values it gives rlft's stage), train, save the policy.

Prints one line `RESULT {json}`: seconds of the imports, of the set-up, of each PPO update (from
`on_train_begin` to each `on_step_end`), of the save, and the logged metrics of each update
(`objective/scores`: the mean reward-model score of that update's sampled responses).
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="the SFT model folder (policy and reference)")
    parser.add_argument("--reward", required=True, help="the reward model folder (reward and value model)")
    parser.add_argument("--prompts", required=True, help="JSONL rows with a conversational `prompt`")
    parser.add_argument("--settings", required=True, help="JSON of PPOConfig values")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import datasets
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
        set_seed,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    imported = time.perf_counter()
    settings = json.loads(open(args.settings).read())
    # lora {r, alpha}: a peft LoraConfig on the policy, whose reference is then the policy with its
    # adapter disabled (TRL's way with ref_model None and a peft model)
    lora = settings.pop("lora", None)
    set_seed(settings.get("seed", 42))
    # left padding: generation continues every prompt from its end
    tokenizer = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    rows = [json.loads(line) for line in open(args.prompts) if line.strip()]
    ids = [
        tokenizer(
            tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )["input_ids"]
        for r in rows
    ]
    train = datasets.Dataset.from_dict({"input_ids": ids})
    dtype = torch.float32
    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=dtype)
    reference = None if lora else AutoModelForCausalLM.from_pretrained(args.policy, dtype=dtype)
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
    reward = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, dtype=dtype)
    value = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, dtype=dtype)
    for model in (reward, value):
        model.config.pad_token_id = tokenizer.pad_token_id

    marks: list[float] = []
    history: list[dict] = []  # each update's logged metrics

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            history.append({**(logs or {}), "update": state.global_step})

    config = PPOConfig(output_dir=args.out, **settings)
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=reference,
        reward_model=reward,
        value_model=value,
        train_dataset=train,
        callbacks=[Clock()],
        peft_config=peft_config,
    )
    ready = time.perf_counter()
    trainer.train()
    trained = time.perf_counter()
    trained_policy = trainer.policy_model  # a PeftModel with LoRA: merged, so the folder is a plain model
    if lora:
        trained_policy = trained_policy.merge_and_unload()
    trained_policy.save_pretrained(f"{args.out}/policy")
    tokenizer.save_pretrained(f"{args.out}/policy")
    saved = time.perf_counter()
    updates = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    print(
        "RESULT "
        + json.dumps(
            {
                "imports": imported - START,
                "setup": ready - imported,
                "train_call": trained - ready,
                "updates": updates,
                "save": saved - trained,
                "logs": history,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
