"""reward_models.composite and rlft.rewards.RewardSpec: weighted sums, specs and their errors."""

import textwrap

import pytest
from pydantic import ValidationError

from reward_models.composite import CompositeReward, RewardSpecError, build_reward, check_spec
from reward_models.loading import RewardLoadError
from rlft.rewards import RewardSpec

USER_REWARDS = """
def a(prompts, completions, **fields):
    return [float(len(c)) for c in completions]

def b(prompts, completions, *, bonus=0.0, **fields):
    return [float(x) + bonus for x in fields["answer"]]
"""


@pytest.fixture
def user_file(tmp_path):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(USER_REWARDS))
    return tmp_path


def test_weighted_sum_and_components(user_file):
    spec = {
        "sum": [{"function": "my_rewards.py:a", "weight": 2}, {"function": "my_rewards.py:b", "weight": 0.5}]
    }
    reward = build_reward(spec, base_dir=user_file)
    assert isinstance(reward, CompositeReward)
    prompts, completions, answer = ["p", "q", "r"], ["x", "yyyy", ""], [1, 3, -2]
    assert reward(prompts, completions, answer=answer) == [2 * 1 + 0.5 * 1, 2 * 4 + 0.5 * 3, 2 * 0 + 0.5 * -2]
    assert reward.last_components == {"a": [1.0, 4.0, 0.0], "b": [1.0, 3.0, -2.0]}
    assert reward.weights == {"a": 2.0, "b": 0.5}


def test_kwargs_bind_and_outer_weight_multiplies(user_file):
    spec = {
        "weight": 3,
        "sum": [{"function": "my_rewards.py:b", "kwargs": {"bonus": 1}}, {"function": "my_rewards.py:b"}],
    }
    reward = build_reward(spec, base_dir=user_file)
    assert reward(["p"], ["x"], answer=[2]) == [3 * 3 + 3 * 2]
    assert reward.last_components == {"b": [3.0], "b_2": [2.0]}  # names made unique


def test_single_function_and_string_shorthand():
    reward = build_reward("reward_models.functions:exact_match")
    assert reward(["p", "p"], ["A", "B"], answer=["A", "A"]) == [1.0, 0.0]
    assert reward.last_components == {"exact_match": [1.0, 0.0]}
    spec = {
        "function": "reward_models.functions:regex_match",
        "kwargs": {"pattern": "^[A-Z ]+$"},
        "weight": 2,
    }
    assert build_reward(spec)(["p", "p"], ["A B", "a b"]) == [2.0, 0.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "give exactly one of from, path, function, sum \\(got: none\\)"),
        ({"from": "reward", "path": "x"}, "got: from, path"),
        ({"fucntion": "m:f"}, "reward.fucntion: unknown key; did you mean function\\?"),
        ({"function": "m:f", "normalize": True}, "only a reward model .* can be normalized"),
        ({"function": "m:f", "weight": "heavy"}, "weight: must be a finite number"),
        ({"sum": []}, "sum: must be a non-empty list"),
        ({"sum": [{"sum": [{"function": "m:f"}]}]}, "sum\\[0\\]: a sum inside a sum"),
        (
            {"sum": [{"function": "m:f"}, {"path": "x", "kwargs": {"bsz": 2}}]},
            "sum\\[1\\].kwargs.bsz: a reward model",
        ),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_specs_say_what_to_write(spec, message):
    with pytest.raises(RewardSpecError, match=message):
        check_spec(spec)
    with pytest.raises(ValueError, match=message):  # RewardSpecError is a ValueError
        build_reward(spec)


def test_bad_functions_and_kwargs(user_file):
    with pytest.raises(RewardLoadError, match="cannot import module 'no_such_module'"):
        build_reward({"function": "no_such_module:f"})
    with pytest.raises(RewardLoadError, match="has no function 'nope' \\(functions: .*exact_match"):
        build_reward({"function": "reward_models.functions:nope"})
    with pytest.raises(RewardLoadError, match="write it as module:function"):
        build_reward({"function": "reward_models.functions"})
    with pytest.raises(RewardLoadError, match="missing.py does not exist"):
        build_reward("missing.py:f", base_dir=user_file)
    with pytest.raises(
        RewardSpecError, match="kwargs.bonsu: b has no parameter 'bonsu'; did you mean bonus\\?"
    ):
        build_reward({"function": "my_rewards.py:b", "kwargs": {"bonsu": 1}}, base_dir=user_file)
    with pytest.raises(RewardSpecError, match="regex_match needs kwargs pattern"):
        build_reward("reward_models.functions:regex_match")


def test_model_sources_that_do_not_resolve(tmp_path):
    with pytest.raises(
        RewardSpecError, match="no earlier stage named 'rm' has an artifact \\(stages: sft\\)"
    ):
        build_reward({"from": "rm"}, stage_paths={"sft": str(tmp_path)})
    with pytest.raises(RewardSpecError, match="folder .*nowhere does not exist"):
        build_reward({"path": "nowhere"}, base_dir=tmp_path)


def test_a_component_returning_the_wrong_count_is_an_error(user_file):
    (user_file / "short.py").write_text("def f(prompts, completions, **k):\n    return [1.0]\n")
    with pytest.raises(ValueError, match="reward 'f' returned 1 rewards for 2 completions"):
        build_reward("short.py:f", base_dir=user_file)(["p", "q"], ["x", "y"])


def test_reward_spec_yaml_model():
    spec = RewardSpec.model_validate(
        {
            "sum": [
                {"from": "reward", "normalize": True, "weight": 1.0},
                {
                    "function": "reward_models.functions:numeric_match",
                    "weight": 2.0,
                    "kwargs": {"tolerance": 0.01},
                },
                {"from": "reward2"},
                {"from": "reward"},
            ]
        }
    )
    assert spec.references() == ["reward", "reward2"]
    assert spec.to_spec() == {
        "sum": [
            {"from": "reward", "weight": 1.0, "normalize": True},
            {
                "function": "reward_models.functions:numeric_match",
                "weight": 2.0,
                "kwargs": {"tolerance": 0.01},
            },
            {"from": "reward2", "weight": 1.0},
            {"from": "reward", "weight": 1.0},
        ],
        "weight": 1.0,
    }
    assert check_spec(spec.to_spec()) == spec.to_spec()
    assert (
        RewardSpec.model_validate("reward_models.tasks:uppercase_copy").function
        == "reward_models.tasks:uppercase_copy"
    )
    assert RewardSpec.model_validate("./runs/rm").path == "./runs/rm"
    assert RewardSpec(from_="reward").references() == ["reward"]  # populate_by_name


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"from": "a", "function": "m:f"}, "give exactly one of from, path, function, sum"),
        ({"function": "m:f", "normalize": True}, "can be normalized"),
        ({"from": "a", "wieght": 2}, "wieght"),
        ({"sum": [{"sum": [{"from": "a"}]}]}, "a sum inside a sum"),
    ],
)
def test_reward_spec_rejects_bad_yaml(data, message):
    with pytest.raises(ValidationError, match=message):
        RewardSpec.model_validate(data)


def test_composite_uses_a_built_spec_from_yaml(user_file):
    spec = RewardSpec.model_validate({"sum": [{"function": "my_rewards.py:a", "weight": 2}]})
    assert build_reward(spec.to_spec(), base_dir=user_file)(["p"], ["abc"]) == [6.0]
