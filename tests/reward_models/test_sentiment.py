"""reward_models.sentiment: tanh(AFINN score / scale), checked by hand on a few sentences."""

import math
import sys

import pytest

pytest.importorskip("afinn", reason="the examples extra: pip install 'rlft[examples]'")

from reward_models.sentiment import afinn_positivity, afinn_score  # noqa: E402


def test_hand_checked_scores_and_rewards():
    # AFINN ratings: great +3, love +3; terrible -3, broke -1, awful -3; "not good" is one phrase, -2
    cases = [
        ("This product is great, I love it!", 6.0),
        ("Terrible. Broke after a day, awful.", -7.0),
        ("It is a chair.", 0.0),
        ("The soup was not good.", -2.0),
    ]
    for text, score in cases:
        assert afinn_score(text) == score, text
    rewards = afinn_positivity(["p"] * len(cases), [text for text, _ in cases])
    assert rewards == pytest.approx([math.tanh(1.2), math.tanh(-1.4), 0.0, math.tanh(-0.4)])
    assert rewards[0] == pytest.approx(0.8337, abs=1e-4) and rewards[1] == pytest.approx(-0.8854, abs=1e-4)


def test_bounded_saturating_conversational_and_scaled():
    gushing = "great " * 40  # the reward-hacking direction earns almost nothing past a few words
    assert afinn_positivity(["p"], [gushing]) == [pytest.approx(1.0)]
    assert all(-1 <= r <= 1 for r in afinn_positivity(["p", "p"], ["awful " * 40, "fine"]))
    conversation = [{"role": "assistant", "content": "I love it."}]
    assert afinn_positivity([[{"role": "user", "content": "review"}]], [conversation]) == [
        pytest.approx(math.tanh(0.6))
    ]
    assert afinn_positivity(["p"], ["I love it."], scale=3.0) == [pytest.approx(math.tanh(1.0))]
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        afinn_positivity(["a", "b"], ["x"])


def test_missing_afinn_says_how_to_install(monkeypatch):
    from reward_models import sentiment

    sentiment._lexicon.cache_clear()
    monkeypatch.setitem(sys.modules, "afinn", None)  # import afinn -> ImportError
    try:
        with pytest.raises(ImportError, match=r"pip install 'rlft\[examples\]'"):
            afinn_positivity(["p"], ["good"])
    finally:
        sentiment._lexicon.cache_clear()


def test_usable_as_a_reward_spec():
    from reward_models import build_reward

    reward = build_reward("reward_models.sentiment:afinn_positivity")
    assert reward(["p", "p"], ["I love it.", "awful"]) == pytest.approx([math.tanh(0.6), math.tanh(-0.6)])
