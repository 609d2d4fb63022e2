"""rlft.data.mixture: shares from weights or temperature, a sampler that hits them, the same on every rank."""

import pytest

from rlft.data.mixture import TaskSampler, mixture_shares


def draws(sampler: TaskSampler, n: int) -> list[int]:
    return [sampler.next_task() for _ in range(n)]


def test_shares_from_weights_and_from_temperature():
    assert mixture_shares([10, 10, 10], weights=[3, 1, 0]) == [0.75, 0.25, 0.0]
    sizes = [100, 900]
    assert mixture_shares(sizes, temperature=1.0) == pytest.approx([0.1, 0.9])  # proportional to size
    assert mixture_shares(sizes, temperature=2.0) == pytest.approx([10 / 40, 30 / 40])  # sqrt: 10 vs 30
    assert mixture_shares(sizes, temperature=1000.0) == pytest.approx(
        [0.5, 0.5], abs=0.002
    )  # towards uniform
    with pytest.raises(ValueError, match="the weights sum to 0"):
        mixture_shares([5, 5], weights=[0, 0])
    with pytest.raises(ValueError, match="exactly one of weights and temperature"):
        mixture_shares([5, 5])


@pytest.mark.parametrize(
    "shares",
    [[0.5, 0.5], [0.6, 0.3, 0.1], [0.97, 0.03], mixture_shares([50, 450, 4000], temperature=2.0)],
    ids=["even", "weights", "skewed", "temperature"],
)
def test_realised_shares_hit_the_configured_ones(shares):
    """Over many draws, and at every point of the run: each task's count stays within the number of
    tasks of share x draws (i.i.d. draws would wander by ~sqrt(draws))."""
    sampler = TaskSampler(shares, [1000] * len(shares), batch_size=4, seed=7)
    worst = 0.0
    for t in range(1, 3001):
        sampler.next_task()
        worst = max(worst, *(abs(k - p * t) for k, p in zip(sampler.counts, shares, strict=True)))
    assert worst < len(shares)
    assert sampler.realised_shares() == pytest.approx(shares, abs=0.001)
    # and 200 draws are already within 2 points
    short = TaskSampler(shares, [1000] * len(shares), batch_size=4, seed=8)
    draws(short, 200)
    assert short.realised_shares() == pytest.approx(shares, abs=0.02)


def test_the_order_is_seeded_random_not_a_fixed_cycle():
    a = draws(TaskSampler([0.5, 0.5], [10, 10], batch_size=1, seed=0), 200)
    assert a == draws(TaskSampler([0.5, 0.5], [10, 10], batch_size=1, seed=0), 200)
    assert a != draws(TaskSampler([0.5, 0.5], [10, 10], batch_size=1, seed=1), 200)
    pairs = {tuple(a[i : i + 2]) for i in range(0, 200, 2)}
    assert pairs == {(0, 1), (1, 0)}  # each pair of draws holds both tasks, in either order


def test_two_ranks_draw_the_same_tasks_and_split_each_batch():
    shares, sizes = [0.7, 0.3], [36, 12]
    ranks = [TaskSampler(shares, sizes, batch_size=3, seed=5, rank=r, world_size=2) for r in (0, 1)]
    alone = TaskSampler(shares, sizes, batch_size=6, seed=5)  # one process with the global batch
    seen = {0: [], 1: []}
    for _ in range(40):
        (t0, rows0), (t1, rows1) = ranks[0].next(), ranks[1].next()
        task, rows = alone.next()
        assert t0 == t1 == task  # the same task on every rank
        assert len(rows0) == len(rows1) == 3 and not set(rows0) & set(rows1)  # no row shared within a batch
        assert rows0 + rows1 == rows  # together: the global batch
        seen[task] += rows
    # each epoch of a task uses every row once, in a new order
    assert (
        sorted(seen[0][:36]) == sorted(seen[0][36:72]) == list(range(36)) and seen[0][:36] != seen[0][36:72]
    )


def test_a_batch_that_runs_past_an_epoch_goes_on_in_the_next():
    sampler = TaskSampler([1.0], [11], batch_size=4, seed=0)
    rows = [i for _ in range(11) for i in sampler.next()[1]]  # 44 rows: 4 epochs exactly
    assert all(sorted(rows[k : k + 11]) == list(range(11)) for k in range(0, 44, 11))


def test_a_saved_sampler_resumes_the_same_sequence():
    sampler = TaskSampler([0.5, 0.3, 0.2], [7, 9, 5], batch_size=2, seed=3)
    for _ in range(13):
        sampler.next()
    state = sampler.state_dict()
    expected = [sampler.next() for _ in range(20)]
    resumed = TaskSampler([0.5, 0.3, 0.2], [7, 9, 5], batch_size=2, seed=3)
    resumed.load_state_dict(state)
    assert [resumed.next() for _ in range(20)] == expected


def test_a_task_at_share_zero_is_never_drawn_and_bad_input_is_refused():
    sampler = TaskSampler([1.0, 0.0], [4, 0], batch_size=2, seed=0)
    assert set(draws(sampler, 50)) == {0}
    with pytest.raises(ValueError, match="task 1 has a share above 0 but no rows"):
        TaskSampler([0.5, 0.5], [4, 0], batch_size=2, seed=0)
    with pytest.raises(ValueError, match="shares must sum to 1"):
        TaskSampler([0.5, 0.4], [4, 4], batch_size=2, seed=0)


def test_a_named_task_goes_through_its_rows_in_the_same_order_in_any_mixture():
    mixed = TaskSampler([0.5, 0.5], [20, 30], batch_size=4, seed=2, names=["upper", "reverse"])
    alone = TaskSampler([1.0], [30], batch_size=4, seed=2, names=["reverse"])
    in_mix = [rows for task, rows in (mixed.next() for _ in range(30)) if task == 1]
    assert in_mix == [alone.next()[1] for _ in range(len(in_mix))]
