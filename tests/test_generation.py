"""Pair selection from scored samples (rlft.generation): orientation, ties, min_margin, best of N."""

from rlft.generation import all_pairs, best_of_n, best_worst_pair, score_samples, select_pairs


def test_best_worst_pair_puts_the_higher_score_first_and_drops_ties_and_small_gaps():
    pair = best_worst_pair([0.2, 0.9, 0.1, 0.5])
    assert (pair.chosen, pair.rejected) == (1, 2) and pair.score_chosen > pair.score_rejected
    assert best_worst_pair([0.3, 0.3, 0.3]) == "tie"
    assert best_worst_pair([0.3, 0.5], min_margin=0.5) == "below_margin"
    assert best_worst_pair([0.0, 0.5], min_margin=0.5).margin == 0.5


def test_all_pairs_keeps_every_pair_whose_gap_clears_min_margin():
    pairs, ties, below = all_pairs([1.0, 0.0, 0.5, 0.5], min_margin=0.5)
    assert {(p.chosen, p.rejected) for p in pairs} == {(0, 1), (0, 2), (0, 3), (2, 1), (3, 1)}
    assert all(p.score_chosen - p.score_rejected >= 0.5 for p in pairs)
    assert (ties, below) == (1, 0)
    pairs, ties, below = all_pairs([1.0, 0.0, 0.5, 0.5], min_margin=0.6)
    assert [(p.chosen, p.rejected) for p in pairs] == [(0, 1)] and (ties, below) == (1, 4)


def test_select_pairs_counts_over_prompts_and_best_of_n_takes_the_first_best():
    scores = [[0.1, 0.7], [0.4, 0.4], [0.9, 0.2, 0.9]]
    pairs, counts = select_pairs(scores, mode="best_worst")
    assert [(p, pair.chosen, pair.rejected) for p, pair in pairs] == [(0, 1, 0), (2, 0, 1)]
    assert (counts.pairs, counts.ties, counts.below_margin) == (2, 1, 0)
    _, counts = select_pairs(scores, mode="all")
    assert (counts.pairs, counts.ties) == (3, 2)
    assert best_of_n(scores) == [1, 0, 0]


def test_score_samples_repeats_fields_and_shapes_conversational_completions():
    seen = {}

    def reward(prompts, completions, answer):
        seen.update(prompts=prompts, completions=completions, answer=answer)
        return [float(len(c[0]["content"])) for c in completions]

    chat = [{"role": "user", "content": "hi"}]
    scores = score_samples(reward, [chat, chat], [["a", "bb"], ["ccc", ""]], {"answer": ["x", "y"]})
    assert scores == [[1.0, 2.0], [3.0, 0.0]]
    assert seen["answer"] == ["x", "x", "y", "y"] and seen["completions"][0] == [
        {"role": "assistant", "content": "a"}
    ]
