"""PPO checkpoints: everything a run that died needs to go on as if it had not.

    checkpoints/checkpoint-N/
      model.safetensors, optimizer.bin, random_states_<rank>.pkl, ...   accelerate's `save_state`:
                          the actor-critic (policy + critic), the optimizer, every process's RNG
                          (python, numpy, torch); a DeepSpeed engine's own checkpoint under DeepSpeed
      trainer_state.json  rlft's part, written last (a folder without it is incomplete): the step,
                          episodes, the KL controller, the prompt sampler's position, the LR schedule

The pipeline resumes a stage from the last `checkpoint-*` holding a `trainer_state.json`
(rlft.pipeline.decide), the same rule as for the TRL stages. accelerate reads its files
back with `torch.load(weights_only=True)` (RNG states through its list of safe globals).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from rlft import faults
from rlft.artifacts import CHECKPOINT_STATE as STATE_FILE
from rlft.artifacts import complete_checkpoints


def checkpoint_path(checkpoint_dir: str | Path, step: int) -> Path:
    return Path(checkpoint_dir) / f"checkpoint-{step}"


def save_checkpoint(accelerator: Any, folder: str | Path, state: dict[str, Any], *, keep: int | None) -> Path:
    """Save the accelerator's state and `state` (JSON) to `folder`; keep the newest `keep` checkpoints.

    Every process must call it (each writes its RNG state; DeepSpeed saves collectively).
    """
    folder = Path(folder)
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    step = int(folder.name.split("-")[-1])
    faults.checkpoint_half_written(step, folder)
    if accelerator.is_main_process:
        tmp = folder / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, folder / STATE_FILE)
        if keep is not None:
            for old in complete_checkpoints(folder.parent)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    faults.checkpoint_complete(step, folder)
    return folder


def load_checkpoint(accelerator: Any, folder: str | Path) -> dict[str, Any]:
    """Restore the accelerator's state from `folder`; returns the saved `state`."""
    folder = Path(folder)
    state = json.loads((folder / STATE_FILE).read_text())
    accelerator.load_state(str(folder))
    return state
