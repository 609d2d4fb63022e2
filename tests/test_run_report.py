"""rlft/report.py's pure pieces: the reward-against-KL frontier."""

from rlft.report import pareto_front


def test_the_frontier_keeps_the_best_reward_for_each_kl_budget():
    points = [(0.5, 0.6), (0.1, 0.2), (0.3, 0.2), (0.2, 0.5), (0.9, 0.55), (0.1, 0.1), (1.0, 0.9)]
    # (0.3, 0.2) is beaten by (0.2, 0.5); (0.9, 0.55) by (0.5, 0.6); (0.1, 0.1) by (0.1, 0.2)
    assert pareto_front(points) == [1, 3, 0, 6]
    assert pareto_front([(0.2, 0.4), (0.2, 0.4)]) == [0]  # a tie is one point of the frontier
    assert pareto_front([]) == []


def test_summary_and_page_carry_the_evaluation(tmp_path):
    """A run folder with eval.json: summary.md gets the evaluation's columns that some row has, and the
    page a reward model's reliability table and the reward-against-KL plot."""
    import json

    from rlft.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    stages = [
        {"stage": "sft", "kind": "sft", "status": "ran"},
        {"stage": "rm", "kind": "reward", "status": "ran"},
    ]
    (run / "summary.json").write_text(json.dumps(stages + [{"stage": "dpo", "kind": "dpo", "status": "ran"}]))
    reliability = [{"low": 0.9, "high": 0.95, "n": 4, "confidence": 0.93, "accuracy": 0.75}]
    evaluation = [
        {"stage": "sft", "kind": "sft", "baseline": None, "task_reward": 0.25, "perplexity": 3.5},
        {"stage": "rm", "kind": "reward", "pair_accuracy": 0.75, "ece": 0.18, "reliability": reliability},
        {"stage": "dpo", "kind": "dpo", "baseline": "sft", "task_reward": 0.5, "kl": 1.25, "kl_stderr": 0.1},
    ]
    (run / "eval.json").write_text(json.dumps(evaluation))
    page = write_report([run]).read_text()
    assert "reliability of reward model rm on held-out pairs (ECE 0.18)" in page and "<td>0.93</td>" in page
    assert 'alt="reward against KL"' in page
    summary = (run / "summary.md").read_text()
    assert "| stage | baseline | task reward | KL | perplexity | RM pair acc. | RM ECE |" in summary
    assert (
        "| dpo | sft | 0.5 | 1.25 | - | - | - |" in summary
        and "| rm | - | - | - | - | 0.75 | 0.18 |" in summary
    )
