"""Typed job parameters (``rtgrid.master.jobs.params`` and the ``assist`` request): good strings
parse to the declared types and defaults, every bad value is refused naming the parameter, its
value and what is allowed, and the kinds' documented parameter lists agree with the declarations.
No grid, no store: these parsers need neither."""

from __future__ import annotations

import json
import re

import pytest

from rtgrid.engines.dose.beams import equispaced_gantry_angles
from rtgrid.engines.dose.machine import STANDARD_MACHINE_ID
from rtgrid.master.errors import InvalidArgument
from rtgrid.master.jobs import contour, plan, predict
from rtgrid.master.jobs.assist import AssistRequest, parse_assist
from rtgrid.master.jobs.params import (
    MAX_BEAMS,
    PLAN_EXTRA,
    PLAN_INTERNAL,
    PLAN_PARAMS,
    MAX_SHARDS,
    SLICES_PER_SHARD,
    ContourParams,
    PlanParams,
    PredictParams,
    bounds_of,
    parse_contour_params,
    parse_plan_params,
    parse_predict_params,
)

ORDER = "prescription: {target: PTV, dose_gy: 60, fractions: 30}\n"


def test_plan_defaults_come_from_the_declaration():
    typed = parse_plan_params({"order": ORDER})
    assert typed == PlanParams(order=ORDER)
    assert (typed.beams, typed.bixel_mm, typed.dose_grid_mm) == (9, 5.0, 3.0)
    assert (typed.machine, typed.body, typed.device_rule, typed.devices) == (STANDARD_MACHINE_ID, "BODY", "congestion", "")
    assert typed.angles_deg == equispaced_gantry_angles(9)
    assert typed.contour == ContourParams()


def test_plan_values_parse_to_their_types():
    typed = parse_plan_params({"order": ORDER, "gantry_angles": "180, 240,300,", "bixel_mm": "2.5",
                               "dose_grid_mm": "10", "body": "EXTERNAL", "devices": "auto:2",
                               "device_rule": "shortest_queue", "contours_job": "job-1"})
    assert typed.gantry_angles_deg == (180.0, 240.0, 300.0) and typed.angles_deg == [180.0, 240.0, 300.0]
    assert (typed.bixel_mm, typed.dose_grid_mm, typed.body) == (2.5, 10.0, "EXTERNAL")
    assert (typed.devices, typed.device_rule, typed.contours_job) == ("auto:2", "shortest_queue", "job-1")
    assert parse_plan_params({"order": ORDER, "beams": "5"}).angles_deg == equispaced_gantry_angles(5)
    full = parse_plan_params({"order": ORDER, "shards": "4"}, "full")
    assert full.shards == 4 and full.contour == ContourParams(shards=4)


@pytest.mark.parametrize("name, value, words", [
    ("bixel_mm", "nan", ("bixel_mm=nan mm", "[2.0, 20.0] mm")),
    ("bixel_mm", "1.5", ("bixel_mm=1.5 mm", "outside [2.0, 20.0] mm")),
    ("bixel_mm", "five", ("bixel_mm='five'", "not a number")),
    ("dose_grid_mm", "-3", ("dose_grid_mm=-3.0 mm", "outside [1.0, 10.0] mm")),
    ("dose_grid_mm", "inf", ("dose_grid_mm=inf mm", "outside [1.0, 10.0] mm")),
    ("beams", "0", ("beams=0", f"outside [1, {MAX_BEAMS}]")),
    ("beams", "37", ("beams=37", f"outside [1, {MAX_BEAMS}]")),
    ("beams", "5.0", ("beams='5.0'", "not an integer")),
    ("gantry_angles", "0,x", ("gantry_angles='0,x'", "comma-separated list of degrees")),
    ("gantry_angles", "0,360", ("gantry_angles", "[0, 360) degrees", "[0.0, 360.0]")),
    ("gantry_angles", ",", ("gantry_angles", f"1 to {MAX_BEAMS} angles")),
    ("machine", "Cobalt-60", ("unknown machine 'Cobalt-60'", STANDARD_MACHINE_ID)),
    ("device_rule", "shortest_queue", ("device_rule needs devices",)),
    ("warp_drive", "on", ("unknown parameter(s) for a plan job: warp_drive",)),
    ("shards", "4", ("unknown parameter(s) for a plan job: shards",)),
    ("dose_model", "x", ("unknown parameter(s) for a plan job: dose_model",)),  # the master's own
])
def test_every_bad_plan_value_is_named(name, value, words):
    with pytest.raises(InvalidArgument) as caught:
        parse_plan_params({"order": ORDER, name: value}, submitted=True)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize("params, words", [
    ({}, ("medical order", "parameter order")),
    ({"order": ""}, ("medical order",)),
    ({"order": "/etc/rtgrid/order.yaml"}, ("order='/etc/rtgrid/order.yaml'", "file path")),
    ({"order": ORDER, "beams": "5", "gantry_angles": "0,90"}, ("either beams or gantry_angles",)),
])
def test_plan_order_and_beams_are_checked(params, words):
    with pytest.raises(InvalidArgument) as caught:
        parse_plan_params(params)
    for word in words:
        assert word in str(caught.value)


def test_full_takes_shards_and_not_contours_job():
    with pytest.raises(InvalidArgument, match=r"parameter shards=65 is outside \[1, 64\]"):
        parse_plan_params({"order": ORDER, "shards": "65"}, "full")
    with pytest.raises(InvalidArgument, match="for a full job: contours_job"):
        parse_plan_params({"order": ORDER, "contours_job": "job-1"}, "full")


def test_stored_plan_params_keep_the_masters_own():
    typed = parse_plan_params({"order": ORDER, "dose_model": "hn@1:abc"})
    assert typed.dose_model == "hn@1:abc"


def test_contour_params():
    assert parse_contour_params({}) == ContourParams()
    assert ContourParams().slab_count(40) == 3 == -(-40 // SLICES_PER_SHARD)
    assert ContourParams(shards=8).slab_count(5) == 5  # never more slabs than slices
    stored = parse_contour_params({"shards": "4", "models": "a@1:aa,b@2:bb",
                                   "models_skipped": json.dumps([{"model": "c@1", "reason": "r"}])})
    assert stored.shards == 4 and stored.model_hashes == ["aa", "bb"]
    assert stored.models_skipped == ({"model": "c@1", "reason": "r"},)
    assert contour.model_hashes({"models": "a@1:aa"}) == ["aa"]
    assert contour.ContourJob().stages_for({"models": "a@1:aa"}) == ("contour", "segment", "merge")
    assert contour.ContourJob().stages_for({}) == ("contour", "merge")


@pytest.mark.parametrize("params, words", [
    ({"shards": "many"}, ("shards='many'", "not an integer")),
    ({"shards": "0"}, ("shards=0", f"outside [1, {MAX_SHARDS}]")),
    ({"shards": "65"}, ("shards=65", f"outside [1, {MAX_SHARDS}]")),
    ({"colour": "red"}, ("unknown parameter(s) for a contour job: colour",)),
    ({"models_skipped": "[]"}, ("unknown parameter(s) for a contour job: models_skipped",)),
])
def test_every_bad_contour_value_is_named(params, words):
    with pytest.raises(InvalidArgument) as caught:
        parse_contour_params(params, submitted=True)
    for word in words:
        assert word in str(caught.value)


def test_predict_params():
    assert parse_predict_params({}, submitted=True) == PredictParams()
    assert PredictParams().body == "BODY" == PlanParams(order=ORDER).body
    assert parse_predict_params({"order": ORDER, "model": "hn@1:abc"}) == PredictParams(order=ORDER, model="hn@1:abc")
    for params, words in (({"model": "x"}, "for a predict job: model"), ({"beams": "5"}, "for a predict job: beams"),
                          ({"order": "orders/hn.yml"}, "order='orders/hn.yml' looks like a file path")):
        with pytest.raises(InvalidArgument) as caught:
            parse_predict_params(params, submitted=True)
        assert words in str(caught.value)


SEED = {"name": "GTV", "seed_mm": [0, 0, 0], "hu_range": [-100, 100], "max_radius_mm": 30}


def test_assist_requests_parse_with_their_defaults():
    assert parse_assist(json.dumps(SEED)) == AssistRequest(name="GTV", seed_mm=(0.0, 0.0, 0.0), hu_range=(-100.0, 100.0),
                                                           max_radius_mm=30.0, roi_type="ORGAN", band_mm=5.0)
    box = parse_assist(json.dumps({"name": "X", "box_mm": [[0, 0, 0], [9, 9, 9]], "hu_range": [0, 1],
                                   "roi_type": "GTV", "band_mm": 50}))
    assert box.box_mm == ((0.0, 0.0, 0.0), (9.0, 9.0, 9.0)) and (box.roi_type, box.band_mm) == ("GTV", 50.0)
    assert parse_assist(json.dumps({"rtstruct_base64": "AAAA"})).rtstruct_base64 == "AAAA"


@pytest.mark.parametrize("change, words", [
    ({"band_mm": 0}, ("band_mm", "(0, 50] mm", "got 0")),
    ({"band_mm": 51}, ("band_mm", "(0, 50] mm", "got 51")),
    ({"band_mm": "5"}, ("band_mm", "got '5'")),
    ({"max_radius_mm": 500.5}, ("max_radius_mm", "(0, 500] mm", "got 500.5")),
    ({"max_radius_mm": None}, ("max_radius_mm", "got None")),
    ({"hu_range": [1]}, ("hu_range", "list of 2 numbers", "[1]")),
    ({"hu_range": [100, -100]}, ("hu_range [100.0, -100.0] is empty",)),
    ({"seed_mm": [0, 0, float("inf")]}, ("seed_mm", "finite")),
    ({"name": "x" * 65}, ("name", "1 to 64 characters")),
    ({"roi_type": "TUMOUR"}, ("roi_type 'TUMOUR'",)),
    ({"colour": 1}, ("unknown field(s) colour",)),
    ({"box_mm": [[0, 0, 0]]}, ("exactly one of",)),
    ({"rtstruct_base64": "%%%"}, ("exactly one of",)),
])
def test_every_bad_assist_value_is_named(change, words):
    with pytest.raises(InvalidArgument) as caught:
        parse_assist(json.dumps({**SEED, **change}))
    for word in words:
        assert word in str(caught.value)


def test_bad_assist_boxes_and_rtstructs_are_named():
    for request, words in (({"name": "X", "box_mm": [[0, 0, 0]], "hu_range": [0, 1]}, "box_mm must be two LPS corners"),
                           ({"rtstruct_base64": "%%%"}, "rtstruct_base64 is not base64"),
                           ({"rtstruct_base64": 5}, "rtstruct_base64 is not base64")):
        with pytest.raises(InvalidArgument, match=re.escape(words)):
            parse_assist(json.dumps(request))
    for text, words in (("{not json", "not JSON"), ("[1]", "expected a JSON object")):
        with pytest.raises(InvalidArgument, match=words):
            parse_assist(text)


def _documented(doc: str, name: str) -> str:
    """The docstring line (and continuation) that documents parameter ``name``."""
    match = re.search(rf"``{name}``\s+(.*?)(?=\n``|\n\n|\Z)", doc, re.S)
    assert match, name
    return " ".join(match.group(1).split())


def test_the_documented_parameter_lists_match_the_declarations():
    for name in ("beams", "bixel_mm", "dose_grid_mm"):
        default, bounds = PlanParams.__dataclass_fields__[name].default, bounds_of(PlanParams, name)
        text = _documented(plan.__doc__, name)
        assert f"default {default:g}" in text and f"{bounds.low:g} to {bounds.high:g}" in text, text
    assert f"1 to {MAX_SHARDS}" in _documented(plan.__doc__, "shards")
    assert f"1 to {MAX_BEAMS}" in _documented(plan.__doc__, "gantry_angles")
    assert f"1 to {MAX_SHARDS}" in _documented(contour.__doc__, "shards")
    assert f"one per {SLICES_PER_SHARD} slices" in _documented(contour.__doc__, "shards")
    assert "default ``BODY``" in _documented(plan.__doc__, "body") and "(default ``BODY``)" in predict.__doc__
    assert "``congestion`` (idle first, then shortest queue; default)" in plan.__doc__
    documented = set(re.findall(r"^``(\w+)``", plan.__doc__.split("Parameters (strings")[1], re.M))
    assert documented == set(PLAN_PARAMS) | PLAN_EXTRA["plan"] | PLAN_EXTRA["full"] | PLAN_INTERNAL
