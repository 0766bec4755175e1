"""The release policy file: the shipped values, and a clear error naming the field for every kind
of mistake (unknown key, missing key, wrong type, out of range, wrong schema)."""

from __future__ import annotations

import copy
import pickle

import pytest
import yaml

from rtgrid.engines.errors import EngineError
from rtgrid.engines.qa import plan_acceptance, plan_check
from rtgrid.engines.qa.policy import DEFAULT_POLICY_PATH, SCHEMA, ReleasePolicyError, load_release_policy


@pytest.fixture(scope="module")
def shipped() -> dict:
    return yaml.safe_load(DEFAULT_POLICY_PATH.read_text())


def _write(tmp_path, data) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_the_shipped_policy_holds_the_tg218_tolerance_and_three_attempts():
    policy = load_release_policy()
    assert policy.attempts == ({"n_levels": 10}, {"n_levels": 20, "threshold": 1.0},
                               {"n_levels": 30, "threshold": 1.0, "max_iter": 400})
    gamma = policy.qa.gamma
    assert (gamma.dose_percent, gamma.distance_mm, gamma.threshold_percent, gamma.pass_rate_pct) == (3.0, 2.0, 10.0, 95.0)
    assert policy.qa.hard_goal_slack == 0.03 and policy.qa.hard_priority == 1
    assert policy.describe()["schema"] == SCHEMA and len(policy.content_hash) == 64
    # the QA modules' names are the policy's values, not numbers of their own
    assert plan_check.GAMMA_PASS_RATE_PCT == gamma.pass_rate_pct and plan_check.HARD_GOAL_SLACK == 0.03
    assert plan_acceptance.HOT_SPOT_LIMIT == policy.standard_plan.hot_spot_limit == 1.25
    assert pickle.loads(pickle.dumps(policy)) == policy  # it can travel to an agent


def test_a_changed_value_is_read_from_the_file(tmp_path, shipped):
    data = copy.deepcopy(shipped)
    data["qa"]["gamma"]["pass_rate_pct"] = 90
    data["conversion"]["attempts"] = [{"n_levels": 12, "resolution_mm": 2}]
    policy = load_release_policy(_write(tmp_path, data))
    assert policy.qa.gamma.pass_rate_pct == 90.0 and isinstance(policy.qa.gamma.pass_rate_pct, float)
    assert policy.attempts == ({"n_levels": 12, "resolution_mm": 2.0},)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["conversion"]["attempts"][1].update(n_level=20),
     r"unknown field 'conversion\.attempts\[1\]\.n_level'; known fields .*n_levels"),
    (lambda d: d["qa"].update(gama=1), r"unknown field 'qa\.gama'"),
    (lambda d: d.update(extra=True), r"unknown field 'extra'"),
    (lambda d: d["qa"]["gamma"].pop("distance_mm"), r"missing field 'qa\.gamma\.distance_mm'"),
    (lambda d: d.pop("standard_plan"), r"missing field 'standard_plan'"),
    (lambda d: d["qa"]["gamma"].update(pass_rate_pct="95 %"), r"field 'qa\.gamma\.pass_rate_pct' must be a number, got '95 %'"),
    (lambda d: d["conversion"]["attempts"][0].update(n_levels=10.5),
     r"field 'conversion\.attempts\[0\]\.n_levels' must be an integer, got 10\.5"),
    (lambda d: d["qa"].update(hard_priority=True), r"field 'qa\.hard_priority' must be an integer, got True"),
    (lambda d: d["qa"]["gamma"].update(pass_rate_pct=101), r"field 'qa\.gamma\.pass_rate_pct' must be in \[0\.1, 100\], got 101"),
    (lambda d: d["conversion"]["attempts"][2].update(threshold=1.5),
     r"field 'conversion\.attempts\[2\]\.threshold' must be in \[0, 1\], got 1\.5"),
    (lambda d: d["standard_plan"].update(hot_spot_limit=0.9), r"field 'standard_plan\.hot_spot_limit' must be in \[1, 3\]"),
    (lambda d: d["conversion"].update(attempts=[]), r"'conversion\.attempts' must be a list of 1 to 10 attempts"),
    (lambda d: d["conversion"].update(attempts=[{"n_levels": 10}] * 11), r"'conversion\.attempts' must be a list of 1 to 10"),
    (lambda d: d["qa"].update(gamma=[3, 2]), r"'qa\.gamma' must be a mapping, got \[3, 2\]"),
    (lambda d: d.update(schema="rtgrid-release-policy/2"), r"field 'schema' must be 'rtgrid-release-policy/1'"),
])
def test_every_mistake_names_its_field(tmp_path, shipped, edit, message):
    data = copy.deepcopy(shipped)
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(ReleasePolicyError, match=message) as caught:
        load_release_policy(path)
    assert str(caught.value).startswith(path)
    assert isinstance(caught.value, EngineError) and isinstance(caught.value, ValueError)


def test_an_unreadable_file_is_named(tmp_path):
    with pytest.raises(ReleasePolicyError, match="cannot read the release policy"):
        load_release_policy(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: [unclosed\n")
    with pytest.raises(ReleasePolicyError, match="not valid YAML"):
        load_release_policy(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ReleasePolicyError, match="'the top level' must be a mapping"):
        load_release_policy(bad)
