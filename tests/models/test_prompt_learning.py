"""rlft.models.prompt_learning: prompt- and prefix-tuned models give a row the same outputs padded
(left or right) as alone, and `generate` samples from the distribution the forward computes."""

from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA

from rlft.models.prompt_learning import fix_prompt_learning, is_prompt_learning
from rlft.models.tiny import build_tiny_from_texts

PAD = 0
ROWS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()[:300]
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


def prompted(tiny: Path, method: str, task: str):
    """A tiny model with a random (not text-initialised) prompt, so that the prompt matters."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task == "CAUSAL_LM":
        model = AutoModelForCausalLM.from_pretrained(tiny)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1)
        model.config.pad_token_id = PAD
    config = {"prompt": PromptTuningConfig, "prefix": PrefixTuningConfig}[method]
    model = get_peft_model(model, config(task_type=task, num_virtual_tokens=4))
    torch.manual_seed(0)
    with torch.no_grad():
        model.prompt_encoder.default.embedding.weight.normal_(0, 0.5)
    return fix_prompt_learning(model).eval()


def padded(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return ids, mask


@pytest.mark.parametrize("method", ["prompt", "prefix"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_causal_lm_logits_do_not_depend_on_padding(tiny, method, side):
    model = prompted(tiny, method, "CAUSAL_LM")
    ids, mask = padded(ROWS, side)
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask).logits  # (B, [P +] T, V)
        for i, row in enumerate(ROWS):
            alone = model(input_ids=torch.tensor([row])).logits[0, -len(row) :]  # (n, V)
            real = mask[i].bool().nonzero().squeeze(-1) + batch.shape[1] - ids.shape[1]
            torch.testing.assert_close(batch[i, real], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_classifier_scores_the_last_real_token_whatever_the_padding(tiny, method, side):
    model = prompted(tiny, method, "SEQ_CLS")
    ids, mask = padded(ROWS, side)
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask).logits  # (B, 1)
        alone = torch.cat([model(input_ids=torch.tensor([row])).logits for row in ROWS])  # (B, 1)
        no_prompt = torch.cat([model.get_base_model()(input_ids=torch.tensor([row])).logits for row in ROWS])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone, no_prompt, atol=1e-3)  # the prompt is in the score


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_sampled_tokens_have_the_forward_log_probs(tiny, method):
    """What `generate` samples from (its logits at each step) is what a forward over the sampled
    sequence gives, for left-padded prompts: PPO's and GRPO's ratios start at 1."""
    model = prompted(tiny, method, "CAUSAL_LM")
    ids, mask = padded(ROWS, "left")
    torch.manual_seed(1)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            top_k=0,
            max_new_tokens=5,
            min_new_tokens=5,
            pad_token_id=PAD,
            return_dict_in_generate=True,
            output_logits=True,
        )
        sequences = out.sequences  # (B, T + 5)
        assert torch.equal(sequences[:, : ids.shape[1]], ids)
        sampled = torch.stack(out.logits, dim=1).log_softmax(-1)  # (B, 5, V)
        full_mask = torch.cat([mask, torch.ones(len(ROWS), 5, dtype=torch.long)], dim=1)
        logits = model(input_ids=sequences, attention_mask=full_mask).logits[:, -6:-1]  # (B, 5, V)
    torch.testing.assert_close(logits.log_softmax(-1), sampled, atol=1e-4, rtol=1e-4)


def test_other_models_are_left_alone(tiny):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny), LoraConfig(r=2, target_modules="all-linear")
    )
    for model in (plain, lora):
        assert not is_prompt_learning(model)
        assert fix_prompt_learning(model) is model and "forward" not in vars(model)
