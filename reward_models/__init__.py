"""Scoring, never training: reward models and rule-based reward functions.

Every reward function has one signature: ``f(prompts, completions, **fields) -> list[float]``.

- ``RewardModel``: a reward stage's artifact, scoring text with its own tokenizer (model.py)
- ``exact_match``, ``numeric_match``, ``regex_match``, ``length_penalty``: verifiable rewards (functions.py)
- ``build_reward``: one of these, or a weighted sum of them, from a YAML spec (composite.py)

Importing this package loads neither torch nor transformers (nor anything from rlft): a reward
model imports them when it loads (and rlft's peft support, for a learned prompt).
"""

from reward_models.composite import (
    CompositeReward,
    RewardOutputError,
    RewardSpecError,
    build_reward,
    check_spec,
)
from reward_models.functions import exact_match, length_penalty, numeric_match, regex_match
from reward_models.loading import RewardLoadError, load_function
from reward_models.model import RewardModel, RewardModelError, decode_policy_ids

__all__ = [
    "CompositeReward",
    "RewardLoadError",
    "RewardModel",
    "RewardModelError",
    "RewardOutputError",
    "RewardSpecError",
    "build_reward",
    "check_spec",
    "decode_policy_ids",
    "exact_match",
    "length_penalty",
    "load_function",
    "numeric_match",
    "regex_match",
]
