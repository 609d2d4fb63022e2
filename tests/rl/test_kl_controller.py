"""rlft.rl.kl_controller: Ziegler et al. 2019's adaptive beta, the fixed one, and resume."""

import json
import subprocess
import sys

import pytest

from rlft.rl.kl_controller import AdaptiveKLController, FixedKLController


def test_fixed_controller_never_moves():
    controller = FixedKLController(0.05)
    controller.update(100.0, 512)
    controller.update(0.0, 512)
    assert controller.value == 0.05


@pytest.mark.parametrize(
    "current_kl,error",
    [
        (12.0, 0.2),  # 12 / 6 - 1 = 1.0, clipped to 0.2: beta rises
        (6.6, 0.1),  # inside the clip range: beta rises by the proportional error
        (6.0, 0.0),  # on target: beta stays
        (5.4, -0.1),  # below target: beta falls
        (0.0, -0.2),  # 0 / 6 - 1 = -1.0, clipped to -0.2
    ],
)
def test_adaptive_controller_follows_the_clipped_proportional_error(current_kl, error):
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10_000)

    controller.update(current_kl, 256)

    # beta <- beta * (1 + e * n_steps / horizon)
    assert controller.value == pytest.approx(0.1 * (1 + error * 256 / 10_000))


def test_adaptive_controller_raises_beta_above_target_and_lowers_it_below():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=1_000)
    for _ in range(5):
        controller.update(9.0, 100)
    high = controller.value
    assert high > 0.1
    for _ in range(5):
        controller.update(1.0, 100)
    assert controller.value < high


def test_adaptive_controller_accepts_a_tensor_kl():
    torch = pytest.importorskip("torch")
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    controller.update(torch.tensor(12.0), 256)
    assert isinstance(controller.value, float)
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000))


def test_state_round_trip_resumes_the_same_trajectory():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=1_000)
    for kl in (8.0, 7.0, 3.0):
        controller.update(kl, 64)
    state = json.loads(json.dumps(controller.state_dict()))  # checkpoints may store it as JSON

    resumed = AdaptiveKLController(0.1, target=6.0, horizon=1_000)
    resumed.load_state_dict(state)

    assert resumed.value == controller.value
    controller.update(9.0, 64)
    resumed.update(9.0, 64)
    assert resumed.value == controller.value

    fixed = FixedKLController(0.2)
    fixed_resumed = FixedKLController(0.0)
    fixed_resumed.load_state_dict(fixed.state_dict())
    assert fixed_resumed.value == 0.2


def test_loading_the_other_controllers_state_is_an_error():
    with pytest.raises(ValueError, match="'fixed' KL controller"):
        AdaptiveKLController(0.1, target=6.0, horizon=1_000).load_state_dict(
            FixedKLController(0.1).state_dict()
        )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"init_beta": -0.1, "target": 6.0, "horizon": 10}, "initial KL coefficient"),
        ({"init_beta": 0.1, "target": 0.0, "horizon": 10}, "target"),
        ({"init_beta": 0.1, "target": 6.0, "horizon": 0}, "horizon"),
    ],
)
def test_bad_settings_are_rejected(kwargs, match):
    init_beta = kwargs.pop("init_beta")
    with pytest.raises(ValueError, match=match):
        AdaptiveKLController(init_beta, **kwargs)


def test_controller_module_needs_no_torch_and_rlft_does_not_import_rl():
    code = (
        "import sys, rlft, rlft.rl.kl_controller; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'rlft.rl.core' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    subprocess.run(
        [sys.executable, "-c", "import sys, rlft; assert 'rlft.rl' not in sys.modules"], check=True
    )
