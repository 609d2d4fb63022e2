"""rlft.models.merge_check: the verdict on a merge from three models' logits, and when a base has changed."""

import json

import pytest
import torch

from rlft.models.merge_check import base_change, check_ids, merge_verdict

BASE = torch.tensor([[[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]]])  # (R=1, T=2, V=3)
DELTA = torch.tensor([[[0.3, 0.0, -0.2], [0.0, 0.1, 0.0]]])  # what the adapter does to the logits


def test_a_merge_equal_to_base_plus_adapter_passes():
    adapted = BASE + DELTA
    verdict = merge_verdict(adapted + 1e-6, adapted, BASE, rtol=1e-4)
    assert verdict.outcome == "ok"
    assert verdict.atol == pytest.approx(
        1e-4 * 2.8
    )  # scaled by the largest |logit| of base + adapter: 3.0 - 0.2
    assert verdict.from_base == pytest.approx(0.3, abs=1e-5)
    assert "merge check passed" in verdict.describe() and "2.8e-04" in verdict.describe()


def test_a_merge_that_reproduces_the_base_is_lost_not_inexact():
    verdict = merge_verdict(BASE.clone(), BASE + DELTA, BASE, rtol=1e-4)
    assert verdict.outcome == "base_reproduced"
    assert "reproduces its base model exactly" in verdict.describe()
    assert "adapter was lost" in verdict.describe()
    # within atol of the base, not bit for bit: still lost
    assert merge_verdict(BASE + 1e-6, BASE + DELTA, BASE, rtol=1e-4).outcome == "base_reproduced"


def test_a_merge_elsewhere_is_a_mismatch():
    verdict = merge_verdict(BASE + 2 * DELTA, BASE + DELTA, BASE, rtol=1e-4)
    assert verdict.outcome == "mismatch"
    assert verdict.error == pytest.approx(0.3)
    assert "differ from base + adapter" in verdict.describe()


def test_a_zero_adapter_is_reported_not_refused():
    verdict = merge_verdict(BASE.clone(), BASE.clone(), BASE, rtol=1e-4)
    assert verdict.outcome == "zero_adapter"
    assert "the export is its base model" in verdict.describe()


def test_a_zero_adapter_does_not_hide_a_broken_merge():
    """The adapter changes nothing, but the merged weights do: that is a mismatch, not a zero adapter."""
    assert merge_verdict(BASE + DELTA, BASE.clone(), BASE, rtol=1e-4).outcome == "mismatch"


def test_the_tolerance_is_the_boundary():
    adapted = BASE + DELTA
    atol = 1e-2 * 2.8
    assert merge_verdict(adapted + 0.9 * atol, adapted, BASE, rtol=1e-2).outcome == "ok"
    assert merge_verdict(adapted + 1.1 * atol, adapted, BASE, rtol=1e-2).outcome == "mismatch"


def test_check_ids_are_seeded_and_avoid_padding():
    rows = check_ids(5, avoid=0)
    assert [r.shape for r in rows] == [(1, 16)] * 3
    assert all((r != 0).all() for r in rows)
    assert all(torch.equal(a, b) for a, b in zip(rows, check_ids(5, avoid=0), strict=True))


def test_base_change_compares_what_stage_json_recorded(tmp_path):
    tiny = tmp_path / "tiny-abc"
    tiny.mkdir()
    assert base_change("tiny:tiny-abc", tiny) is None
    assert "tiny model tiny-other" in base_change("tiny:tiny-other", tiny)
    assert base_change(None, tiny) is None  # nothing recorded: nothing to compare
    assert base_change("hub:org/name@main", tiny) is None

    stage = tmp_path / "sft"
    stage.mkdir()
    (stage / "stage.json").write_text(json.dumps({"artifact_hash": "h1"}))
    assert base_change("h1", stage) is None
    assert "has changed since" in base_change("h0", stage)
