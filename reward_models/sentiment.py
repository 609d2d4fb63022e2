"""A sentiment reward from a published lexicon: how positive a response reads, in [-1, 1].

The SmolLM2 sentiment example (configs/examples/smollm2_sentiment.yaml) steers a model's short
reviews towards positive with it, as the DPO paper's controlled-sentiment experiment did with a
classifier (Rafailov et al. 2023, sec. 6.1).

The lexicon is AFINN (Nielsen 2011, "A new ANEW: evaluation of a word list for sentiment analysis
in microblogs"), as the PyPI package ``afinn`` ships it: about 3,300 English words and phrases,
each rated by hand from -5 (very negative) to +5 (very positive); a text's score is the sum of the
ratings of the words it contains (``not good`` is one phrase, rated -2). rlft ships no word list of
its own. Install it with the examples extra: ``pip install 'rlft[examples]'``.

Scaling: reward = tanh(score / scale), scale 5 by default. A sum rather than a per-word mean, so an
answer that says nothing ("It is a chair.", score 0) does not beat one that praises a little, and
tanh rather than a clip, so it saturates smoothly: one strongly positive sentence (``great``,
``love``: +6) gives 0.83, two or three such sentences approach 1, and piling on more praise words
(the reward-hacking direction) earns almost nothing more. Hand-checked values are in
tests/reward_models/test_sentiment.py.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

from reward_models.tasks import _text

INSTALL = "pip install 'rlft[examples]'"


@functools.lru_cache(maxsize=1)
def _lexicon() -> Any:
    try:
        from afinn import Afinn
    except ImportError:
        raise ImportError(
            f"reward_models.sentiment needs the `afinn` package (the AFINN sentiment lexicon): {INSTALL} "
            "(or pip install afinn)"
        ) from None
    return Afinn(language="en")


def afinn_score(text: str) -> float:
    """The AFINN score of a text: the sum of its words' and phrases' ratings (-5..+5 each)."""
    return float(_lexicon().score(text))


def afinn_positivity(
    prompts: Sequence[Any], completions: Sequence[Any], *, scale: float = 5.0, **fields: Any
) -> list[float]:
    """How positive each completion reads: tanh(AFINN score / scale), in [-1, 1]; 0 for no rated word.

    A completion is a string or a conversation (its last assistant message is read). Prompts are
    not read, only counted; extra ``fields`` are accepted and ignored.
    scale: the AFINN score that maps to tanh(1) = 0.76; higher = slower to saturate.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"afinn_positivity: {len(prompts)} prompts but {len(completions)} completions")
    if scale <= 0:
        raise ValueError(f"afinn_positivity: scale must be > 0, got {scale}")
    return [math.tanh(afinn_score(_text(c, "assistant")) / scale) for c in completions]
