"""rlft/report.py's pure pieces: the reward-against-KL frontier."""

from rlft.report import frontier_points, pareto_front


def test_the_frontier_keeps_the_best_reward_for_each_kl_budget():
    points = [(0.5, 0.6), (0.1, 0.2), (0.3, 0.2), (0.2, 0.5), (0.9, 0.55), (0.1, 0.1), (1.0, 0.9)]
    # (0.3, 0.2) is beaten by (0.2, 0.5); (0.9, 0.55) by (0.5, 0.6); (0.1, 0.1) by (0.1, 0.2)
    assert pareto_front(points) == [1, 3, 0, 6]
    assert pareto_front([(0.2, 0.4), (0.2, 0.4)]) == [0]  # a tie is one point of the frontier
    assert pareto_front([]) == []


def test_the_frontier_plots_the_true_reward_of_the_samples_the_kl_is_measured_on(tmp_path):
    """y is the verifier on the stages' samples when every point has it, else greedy, else the RM score:
    one measure per axis, never a mix."""
    import json

    rows = {
        "a": [
            {
                "stage": "base",
                "task_reward": 0.3,
                "task_reward_sampled": 0.2,
                "rm_score": 0.1,
            },  # no KL: no point
            {
                "stage": "dpo",
                "kl": 2.0,
                "kl_stderr": 0.5,
                "task_reward": 0.7,
                "task_reward_sampled": 0.6,
                "rm_score": 1.5,
            },
        ],
        "b": [{"stage": "ppo", "kl": 1.0, "task_reward": 0.5, "task_reward_sampled": 0.4, "rm_score": 0.9}],
    }
    for name, evaluation in rows.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(evaluation))
    runs = [tmp_path / "a", tmp_path / "b"]
    assert frontier_points(runs) == (
        [("a", "dpo", 2.0, 0.6, 0.5), ("b", "ppo", 1.0, 0.4, 0.0)],
        "task reward, sampled",
    )
    del rows["b"][0]["task_reward_sampled"]  # one point lacks it: greedy for all
    (tmp_path / "b" / "eval.json").write_text(json.dumps(rows["b"]))
    assert frontier_points(runs) == (
        [("a", "dpo", 2.0, 0.7, 0.5), ("b", "ppo", 1.0, 0.5, 0.0)],
        "task reward, greedy",
    )
    for row in rows["a"] + rows["b"]:
        row.pop("task_reward", None)
    for name, evaluation in rows.items():
        (tmp_path / name / "eval.json").write_text(json.dumps(evaluation))
    assert frontier_points(runs) == (
        [("a", "dpo", 2.0, 1.5, 0.5), ("b", "ppo", 1.0, 0.9, 0.0)],
        "reward-model score, greedy",
    )
    assert frontier_points([tmp_path / "missing"]) == ([], "")
    (tmp_path / "c").mkdir()  # a sweep point that shares a's dpo stage: one point, a's
    (tmp_path / "c" / "eval.json").write_text(json.dumps(rows["a"]))
    points, _ = frontier_points([tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    assert [(run, stage) for run, stage, *_ in points] == [("a", "dpo"), ("b", "ppo")]


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
