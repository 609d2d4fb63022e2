"""A mixture of tasks: each task's share of the draws, and the seeded sampler that draws them.

Shares (`mixture_shares`) come from the tasks' weights, p_i = w_i / Σ w, or from their sizes at a
temperature T, p_i ∝ n_i^(1/T) (T = 1: proportional to size; larger T: flatter, towards uniform;
the temperature sampling of multilingual pre-training, e.g. Conneau et al. 2020, "Unsupervised
Cross-lingual Representation Learning at Scale" (XLM-R), sec. 3.1, there with α = 1/T).

`TaskSampler` draws which task each micro-batch comes from, and which of that task's rows each
process takes. Draws are not independent: i.i.d. draws would miss a share of 0.5 by ±2 points
(one standard deviation) over 600 draws, so the mixture the run trained on would be noise. Each
draw instead picks a task with probability proportional to how far it is behind its share
(its *deficit* c_i = p_i·(t+1) - k_i after k_i of t draws, tasks ahead of their share never
drawn): the order is random and seeded, and every task's count stays within (number of tasks)
draws of p_i·t at every t (the deficits sum to 1 and none falls below p_i - 1).

Every process draws the same sequence (the draws depend only on the seed and the position) and
takes its own slice of the drawn task's global batch, so the processes train on one task at a
time and share no row within a batch (unless the batch runs past the end of the task's epoch: it
goes on in the next epoch's order, which may repeat a row). The position is the state:
`state_dict()` saved with a checkpoint resumes the same sequence. Pure Python; no torch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def mixture_shares(
    sizes: Sequence[int], *, weights: Sequence[float] | None = None, temperature: float | None = None
) -> list[float]:
    """Each task's share of the draws: from `weights` (p_i = w_i / Σ w), or, with `temperature` T,
    from the tasks' sizes (p_i ∝ n_i^(1/T)). Give exactly one of the two."""
    if (weights is None) == (temperature is None):
        raise ValueError("give exactly one of weights and temperature")
    if weights is not None:
        if len(weights) != len(sizes):
            raise ValueError(f"{len(weights)} weights for {len(sizes)} tasks")
        if any(w < 0 for w in weights):
            raise ValueError(f"weights must be >= 0 (got {list(weights)})")
        raw = [float(w) for w in weights]
    else:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (got {temperature})")
        if any(n < 0 for n in sizes):
            raise ValueError(f"sizes must be >= 0 (got {list(sizes)})")
        raw = [float(n) ** (1.0 / temperature) if n > 0 else 0.0 for n in sizes]
    total = sum(raw)
    if total <= 0:
        raise ValueError("the weights sum to 0: give at least one task a weight above 0")
    return [r / total for r in raw]


class TaskSampler:
    """Which task each micro-batch comes from (by deficit, see the module's doc) and this process's rows of it.

    `shares`: each task's share (sums to 1); `sizes`: each task's number of rows. A draw takes a
    global batch of `batch_size * world_size` rows of the drawn task, in the order of a seeded
    permutation of its rows (a new one each epoch of that task; a batch that runs past the end
    continues in the next epoch's), and returns this process's slice of it. A task's row order is
    seeded by its name (`names`; default: its index), so a task of the same name and size goes
    through its rows in the same order in any mixture: alone, or with other tasks.
    """

    def __init__(
        self,
        shares: Sequence[float],
        sizes: Sequence[int],
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        names: Sequence[str] | None = None,
    ) -> None:
        if len(shares) != len(sizes):
            raise ValueError(f"{len(shares)} shares for {len(sizes)} tasks")
        if abs(sum(shares) - 1.0) > 1e-6:
            raise ValueError(f"shares must sum to 1 (got {sum(shares)})")
        empty = [i for i, (p, n) in enumerate(zip(shares, sizes, strict=True)) if p > 0 and n <= 0]
        if empty:
            raise ValueError(f"task {empty[0]} has a share above 0 but no rows")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        if names is not None and len(names) != len(shares):
            raise ValueError(f"{len(names)} names for {len(shares)} tasks")
        self.shares, self.sizes = list(shares), list(sizes)
        self.names = [str(i) for i in range(len(shares))] if names is None else list(names)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.draws = 0  # micro-batches drawn so far
        self.counts = [0] * len(shares)  # of them, per task
        self.epochs = [0] * len(shares)  # per task: its current epoch
        self.positions = [0] * len(shares)  # per task: rows of the current epoch's permutation used
        self._orders: dict[tuple[int, int], list[int]] = {}  # (task, epoch) -> its permutation

    def next_task(self) -> int:
        """Draw the next micro-batch's task (the same on every process)."""
        deficits = [p * (self.draws + 1) - k for p, k in zip(self.shares, self.counts, strict=True)]
        positive = [max(d, 0.0) for d in deficits]
        rng = random.Random(f"mixture/{self.seed}/{self.draws}")
        task = rng.choices(range(len(positive)), weights=positive)[0]
        self.draws += 1
        self.counts[task] += 1
        return task

    def next_rows(self, task: int) -> list[int]:
        """Row indices of this process's part of the next global batch of `task`."""
        global_batch = self.batch_size * self.world_size
        rows: list[int] = []
        while len(rows) < global_batch:
            order = self._order(task, self.epochs[task])
            take = order[self.positions[task] : self.positions[task] + global_batch - len(rows)]
            rows += take
            self.positions[task] += len(take)
            if self.positions[task] == self.sizes[task]:
                self.epochs[task], self.positions[task] = self.epochs[task] + 1, 0
        return rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def next(self) -> tuple[int, list[int]]:
        """(task, this process's row indices of it) for the next micro-batch."""
        task = self.next_task()
        return task, self.next_rows(task)

    def realised_shares(self) -> list[float]:
        """Each task's share of the micro-batches drawn so far (all 0 before the first draw)."""
        return [k / self.draws if self.draws else 0.0 for k in self.counts]

    def _order(self, task: int, epoch: int) -> list[int]:
        if (task, epoch) not in self._orders:
            order = list(range(self.sizes[task]))
            random.Random(f"rows/{self.seed}/{self.names[task]}/{epoch}").shuffle(order)
            self._orders = {k: v for k, v in self._orders.items() if k[0] != task}  # one epoch per task
            self._orders[task, epoch] = order
        return self._orders[task, epoch]

    def state_dict(self) -> dict[str, object]:
        return {
            "draws": self.draws,
            "counts": list(self.counts),
            "epochs": list(self.epochs),
            "positions": list(self.positions),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        counts = list(state["counts"])
        if len(counts) != len(self.shares):
            raise ValueError(f"the saved sampler has {len(counts)} tasks, this one {len(self.shares)}")
        self.draws, self.counts = int(state["draws"]), [int(k) for k in counts]
        self.epochs = [int(e) for e in state["epochs"]]
        self.positions = [int(p) for p in state["positions"]]
