"""The KL coefficient beta of the PPO reward R = score - beta * KL: fixed, or adapted to a target.

Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", sec. 2.2: to hold
the policy's KL from the reference near a target, beta moves by a proportional controller,

    e_t       = clip(KL_t / KL_target - 1, -0.2, 0.2)
    beta_t+1  = beta_t * (1 + K_beta * e_t),   K_beta = n_steps / horizon

so beta rises while the KL is above the target and falls while it is below, by at most
20% * n_steps / horizon per update. Huang et al. 2024's reference code
(`AdaptiveKLController` in github.com/vwxyzjn/summarize_from_feedback_details) keeps this form;
it defaults to a fixed beta of 0.05, and to target 6 and horizon 10,000 when adaptive.

Units, as in both papers' code: `current_kl` is the KL of whole responses (per-token
estimates summed over a response, averaged over the rollouts), not a per-token mean;
`n_steps` is the number of rollouts (episodes) the update covers, and `horizon` is counted in
episodes too.

Plain Python floats: no torch import. A tensor `current_kl` works (it is read with float()).
"""

from __future__ import annotations

from typing import Any

ERROR_CLIP = 0.2  # Ziegler et al. 2019, sec. 2.2: the proportional error is clipped to [-0.2, 0.2]


class FixedKLController:
    """A constant beta; `update` does nothing. Same interface as `AdaptiveKLController`."""

    kind = "fixed"

    def __init__(self, beta: float) -> None:
        if beta < 0:
            raise ValueError(f"the KL coefficient beta must be >= 0 (got {beta})")
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt: beta stays as given."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        self.value = float(state["value"])


class AdaptiveKLController:
    """beta adapted towards a target KL (Ziegler et al. 2019, sec. 2.2).

    init_beta: beta at the start. target: the response-level KL to hold (nats).
    horizon: episodes over which a persistent 20% error changes beta by about 20%; larger is
    slower.
    """

    kind = "adaptive"

    def __init__(self, init_beta: float, *, target: float, horizon: int) -> None:
        if init_beta < 0:
            raise ValueError(f"the initial KL coefficient must be >= 0 (got {init_beta})")
        if target <= 0:
            raise ValueError(f"the KL target must be > 0 (got {target})")
        if horizon <= 0:
            raise ValueError(f"the KL horizon must be > 0 episodes (got {horizon})")
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move beta after a batch of `n_steps` rollouts whose mean response KL was `current_kl`."""
        error = min(max(float(current_kl) / self.target - 1.0, -ERROR_CLIP), ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: beta now. target and horizon come from the config."""
        return {"kind": self.kind, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, self.kind)
        self.value = float(state["value"])


def _check_kind(state: dict[str, Any], kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(
            f"this checkpoint holds a {state.get('kind')!r} KL controller, but the run uses a {kind!r} one; "
            "resume with the KL settings the run started with"
        )
