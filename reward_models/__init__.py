"""Scoring, never training: reward models and rule-based reward functions.

Every reward function has one signature: ``f(prompts, completions, **fields) -> list[float]``.
"""
