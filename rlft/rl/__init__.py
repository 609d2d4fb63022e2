"""rlft's own PPO for language models: pure, tested pieces (the `ppo` stage wires them together).

| module          | what it holds                                                                    |
|-----------------|----------------------------------------------------------------------------------|
| `core`          | per-token maths: log-probs, masked statistics, KL estimators, rewards, GAE, losses |
| `experience`    | the `Experience` dataclass (one batch of rollouts) and `make_experience`          |
| `kl_controller` | fixed and adaptive KL coefficients (Ziegler et al. 2019, sec. 2.2)                |
| `rollout`       | prompts -> sampled responses -> scores -> `Experience` (prompt order, reference)  |
| `critic`        | the value model (separate, LoRA, or a head on the policy) and the actor-critic    |
| `update`        | PPO epochs of clipped-loss minibatch updates; the optimizer and its LR schedule   |
| `metrics`       | the `ppo/*` metrics of a step, averaged over processes; sample-table rows         |
| `checkpoint`    | save / resume a run: accelerate's state + trainer_state.json                      |
| `perf`          | FLOPs of a step by phase, the timed matmul rate, the `perf/*` metrics (MFU)       |

Sources, cited where each piece is defined:
- Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO: A Case Study on TL;DR
  Summarization" (arXiv:2403.17031), sec. 7 "PPO Details" and its reference code
  (github.com/vwxyzjn/summarize_from_feedback_details).
- Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences" (arXiv:1909.08593).
- Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (arXiv:1707.06347).
- Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation" (arXiv:1506.02438).

Shape letters, used in every docstring and comment of this package:
    B   rollouts in a batch (one prompt + one sampled response each)
    T   full sequence: left-padded prompt followed by the right-padded response
    A   response tokens (padded): the last A positions of a sequence
    V   vocabulary

Nothing is imported here: `import rlft.rl.kl_controller` needs no torch, and `import rlft`
never imports this package. The `ppo` stage (rlft/stages/ppo.py) wires the pieces together.
"""
