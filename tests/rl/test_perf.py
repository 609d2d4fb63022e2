"""rlft.rl.perf: the FLOPs of a PPO step against a hand count from the tiny model's config numbers and
against torch's own FLOP counter; the matmul rate; the perf/* metrics."""

from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA
from torch.utils.flop_counter import FlopCounterMode

from rlft.models.tiny import build_tiny_from_texts
from rlft.rl.critic import SharedActorCritic, fresh_value_head, lora_critic, value_model_from
from rlft.rl.perf import (
    ForwardCounter,
    ModelCost,
    backward_flops,
    forward_flops,
    generation_flops,
    head_cost,
    measure_matmul_flops,
    model_cost,
    ppo_step_flops,
    step_perf,
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


def load(folder: Path):
    from transformers import AutoModelForCausalLM

    # eager attention: its two matmuls are what torch's FlopCounterMode sees (it has no formula for
    # the CPU's fused attention kernel); the count is the same for any implementation
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")


def hand(config) -> dict[str, int]:
    """Weights per token of the tiny Llama, from its config: q and o are H x H, k and v H x (kv heads *
    head dim), the MLP three H x I maps; the lm_head V x H (tied to the embeddings, still a matmul)."""
    h, i, v, layers = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
        config.num_hidden_layers,
    )
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    return {
        "body": layers * (2 * h * h + 2 * h * kv + 3 * h * i),
        "head": v * h,
        "layers": layers,
        "width": h,
    }


def test_model_cost_reads_the_weights_that_run(tiny_model):
    model = load(tiny_model)
    n = hand(model.config)
    cost = model_cost(model)
    assert (cost.body, cost.head, cost.layers, cost.attention_width) == (n["body"], n["head"], 2, 32)
    assert cost.body_trainable == cost.body and cost.head_trainable == cost.head and cost.adapters == 0
    assert cost.backward_through_body


def test_forward_and_training_flops_match_a_hand_count_and_torch(tiny_model):
    """Full tuning: forward 2 W per token + 4 L H T per token of attention; training 3x the forward."""
    model = load(tiny_model)
    n = hand(model.config)
    b, t = 3, 11
    by_hand = b * (2 * (n["body"] + n["head"]) * t + 4 * n["layers"] * n["width"] * t * t)
    cost = model_cost(model)
    assert forward_flops(cost, rows=b, tokens=t) == by_hand
    assert backward_flops(cost, rows=b, tokens=t) == 2 * by_hand
    ids = torch.randint(3, 100, (b, t), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, use_cache=False).logits.sum().backward()
    assert counter.get_total_flops() == 3 * by_hand


def test_lora_training_runs_the_frozen_trunk_backward_without_its_weight_gradients(tiny_model):
    """LoRA r on every linear map of the body: the adapters add 2 r (in + out) per map and token; the
    backward computes activation gradients through everything, weight gradients of the adapters only."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load(tiny_model), LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    config = model.config
    n = hand(config)
    h, i, r = config.hidden_size, config.intermediate_size, 4
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = r * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))  # q o, k v, gate up, down
    adapters = n["layers"] * per_layer
    cost = model_cost(model)
    assert (cost.adapters, cost.body_trainable, cost.head_trainable) == (adapters, 0, 0)
    b, t = 2, 9
    attention = 4 * n["layers"] * n["width"] * t * t
    forward = b * (2 * (n["body"] + adapters + n["head"]) * t + attention)
    backward = b * (2 * (n["body"] + adapters + n["head"]) * t + 2 * attention + 2 * adapters * t)
    assert forward_flops(cost, rows=b, tokens=t) == forward
    assert backward_flops(cost, rows=b, tokens=t) == backward
    ids = torch.randint(3, 100, (b, t), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, use_cache=False).logits.sum().backward()
    # autograd skips one thing the count keeps: the first layer's q, k, v (and their lora_A) need no
    # gradient of their input, the frozen embeddings (an upper bound by 1/L of those maps)
    skipped = b * t * 2 * (h * h + 2 * h * kv + r * 3 * h)
    assert counter.get_total_flops() == forward + backward - skipped
    reference = model_cost(model).without_adapters()  # the policy with its adapters off
    assert reference == ModelCost(
        layers=2, attention_width=32, body=n["body"], body_trainable=0, head=n["head"]
    )


def test_generation_counts_a_prefill_and_cached_steps(tiny_model):
    """P prompt positions, A new tokens: the prompt once (logits of its last position), then A - 1
    single-token forwards attending to P + k positions; as torch counts a real `generate`."""
    model = load(tiny_model).eval()
    n = hand(model.config)
    b, p, a = 2, 5, 4
    attention = 4 * n["layers"] * n["width"]
    prefill = b * (2 * n["body"] * p + 2 * n["head"] + attention * p * p)
    steps = sum(b * (2 * n["body"] + 2 * n["head"] + attention * (p + k)) for k in range(1, a))
    cost = model_cost(model)
    assert generation_flops(cost, rows=b, prompt_tokens=p, new_tokens=a) == prefill + steps
    ids = torch.randint(3, 100, (b, p), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=a,
            min_new_tokens=a,
            do_sample=False,
        )
    assert counter.get_total_flops() == prefill + steps


def test_ppo_step_by_phase_for_each_critic_design(tiny_model):
    """One step, B rollouts of T = P + A: sample, no-grad policy + critic + reference, ppo_epochs x training."""
    model = load(tiny_model)
    n = hand(model.config)
    b, p, a, epochs = 4, 6, 3, 2
    t = p + a
    attention = 4 * n["layers"] * n["width"] * t * t
    # one forward of the policy (or the reference): the lm_head at the A + 1 positions that predict the response
    lm = b * (2 * n["body"] * t + 2 * n["head"] * (a + 1) + attention)
    value_model = b * (2 * (n["body"] + n["width"]) * t + attention)  # the critic: body + a 1 x H head
    policy = model_cost(model)
    separate = model_cost(value_model_from(load(tiny_model))[0])
    flops = ppo_step_flops(
        policy=policy,
        critic=separate,
        reference=policy,
        rows=b,
        prompt_tokens=p,
        response_tokens=a,
        ppo_epochs=epochs,
    )
    assert flops["sample"] == generation_flops(policy, rows=b, prompt_tokens=p, new_tokens=a)
    assert flops["forward"] == 2 * lm + value_model and flops["score"] == 0
    assert flops["train"] == epochs * 3 * (lm + value_model)

    shared = SharedActorCritic(model, fresh_value_head(n["width"]))
    head = head_cost(shared.critic)
    assert (head.head, head.body) == (n["width"], 0)
    flops = ppo_step_flops(
        policy=policy,
        critic=head,
        reference=policy,
        rows=b,
        prompt_tokens=p,
        response_tokens=a,
        ppo_epochs=epochs,
    )
    head_pass = b * 2 * n["width"] * t
    assert flops["forward"] == 2 * lm + head_pass  # no second trunk
    assert flops["train"] == epochs * (3 * lm + 2 * head_pass)  # the head's forward and weight gradient

    lora = model_cost(
        lora_critic(value_model_from(load(tiny_model))[0], r=2, alpha=4, target_modules="all-linear")
    )
    assert lora.body_trainable == 0 and lora.head_trainable == n["width"] and lora.adapters > 0


def test_reward_model_forwards_are_counted_as_they_ran(tiny_model):
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    counter = ForwardCounter([rm])
    with torch.no_grad():
        rm(input_ids=torch.ones(3, 7, dtype=torch.long))
        rm(torch.ones(2, 4, dtype=torch.long))
    cost = model_cost(rm)
    assert cost.head == 32  # the score head, 1 x H
    assert counter.take() == forward_flops(cost, rows=3, tokens=7) + forward_flops(cost, rows=2, tokens=4)
    assert counter.take() == 0
    counter.close()
    rm(input_ids=torch.ones(1, 3, dtype=torch.long))
    assert counter.flops == 0


def test_matmul_rate_and_step_metrics():
    rate = measure_matmul_flops(torch.float32, "cpu", size=256, seconds=0.02)
    assert 1e8 < rate < 1e14
    flops = {"sample": 10, "score": 0, "forward": 30, "train": 60}
    seconds = {"sample": 1.0, "score": 0.5, "forward": 0.5, "train": 2.0, "other": 1.0}
    perf = step_perf(flops, seconds, rate=20.0)
    assert perf["perf/flops_per_step"] == 100 and perf["perf/mfu"] == pytest.approx(100 / 5 / 20)
    assert perf["perf/mfu/train"] == pytest.approx(60 / 2 / 20) and perf["perf/mfu/score"] == 0
    assert perf["perf/seconds/other"] == 1.0 and "perf/flops/other" not in perf
