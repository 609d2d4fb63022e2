"""rlft.rl.checkpoint: the state file goes in last, so a save cut short is never taken for a checkpoint."""

import pytest
import torch

from rlft import faults
from rlft.artifacts import complete_checkpoints, is_complete_checkpoint
from rlft.rl.checkpoint import load_checkpoint, save_checkpoint


class Died(Exception):
    pass


def test_a_save_cut_short_is_not_a_checkpoint_and_the_previous_one_still_loads(tmp_path, monkeypatch):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    save_checkpoint(accelerator, tmp_path / "checkpoint-2", {"step": 2}, keep=None)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()

    def die(step, folder):  # where RLFT_KILL_DURING_CHECKPOINT=4 would SIGKILL the process
        raise Died

    monkeypatch.setattr(faults, "checkpoint_half_written", die)
    with pytest.raises(Died):
        save_checkpoint(accelerator, tmp_path / "checkpoint-4", {"step": 4}, keep=None)
    assert any((tmp_path / "checkpoint-4").iterdir())  # the weights were written ...
    assert not is_complete_checkpoint(tmp_path / "checkpoint-4")  # ... the state file, written last, not
    assert complete_checkpoints(tmp_path) == [tmp_path / "checkpoint-2"]

    assert load_checkpoint(accelerator, tmp_path / "checkpoint-2") == {"step": 2}
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
