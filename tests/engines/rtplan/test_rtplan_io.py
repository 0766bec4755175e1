"""RT Plan writer and reader: dciodvfy, the DICOM attributes read with plain pydicom, exact round
trips of our own plans and of a commercial planning system's plan."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from rtgrid.engines.dicomrt.rtdose import write_rtdose
from rtgrid.engines.dicomrt.rtplan import (
    RT_PLAN_STORAGE,
    ControlPoint,
    PlanBeam,
    PlanData,
    RtPlanError,
    read_rtplan,
    step_and_shoot_control_points,
    write_rtplan,
)
from rtgrid.engines.dose.machine import load_machine
from rtgrid.engines.imaging.intake import load_series_dir
from rtgrid.engines.imaging.volume import ImageSeries, Volume
from rtgrid.engines.phantom import write_phantom_case

RTSTRUCT_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def dciodvfy_lines(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy is missing in CI: install dicom3tools (apt-get install -y dicom3tools)")
        pytest.skip("needs dciodvfy from dicom3tools (apt-get install -y dicom3tools)")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return (run.stdout + run.stderr).splitlines()


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> ImageSeries:
    case = write_phantom_case(tmp_path_factory.mktemp("phantom"), shape=(8, 40, 40), spacing_mm=(5.0, 5.0, 5.0))
    return load_series_dir(case.ct_dir)


@pytest.fixture(scope="module")
def boundaries() -> tuple[float, ...]:
    return load_machine().leaf_boundaries_mm


def square_aperture(boundaries, half_x: float, half_y: float) -> np.ndarray:
    """Leaves open to +-half_x on the pairs inside +-half_y, closed at x = 0 elsewhere."""
    b = np.asarray(boundaries)
    centres = 0.5 * (b[:-1] + b[1:])
    inside = np.abs(centres) < half_y
    return np.stack([np.where(inside, -half_x, 0.0), np.where(inside, half_x, 0.0)])


def example_plan(boundaries) -> PlanData:
    n_pairs = len(boundaries) - 1
    rng = np.random.default_rng(7)
    static = square_aperture(boundaries, 50.0, 50.0)
    static_beam = PlanBeam(
        "Open 10x10", 1, 0.0, 0.0, 0.0, (1.5, -20.25, 7.75),
        tuple(ControlPoint(static, (-50.0, 50.0), (-50.0, 50.0), w) for w in (0.0, 1.0)),
        meterset_mu=100.0, kind="STATIC", nominal_energy_mv=6.0,
    )
    # Step-and-shoot: three segments with leaf positions on a 0.25 mm raster (short decimals).
    segments = []
    for _ in range(3):
        x1 = np.round(rng.uniform(-60, 0, n_pairs) * 4) / 4
        x2 = x1 + np.round(rng.uniform(0, 60, n_pairs) * 4) / 4
        segments.append(np.stack([x1, x2]))
    points, meterset = step_and_shoot_control_points(
        segments, [(-60.0, 60.0)] * 3, [(-40.0, 45.0), (-40.0, 45.0), (-30.0, 45.0)], [20.0, 35.5, 12.25]
    )
    sns_beam = PlanBeam("IMRT 72", 2, 72.0, 15.0, 0.0, (1.5, -20.25, 7.75), points, meterset, "DYNAMIC", 6.0)
    # Sliding window: every pair sweeps a 20 mm gap from -50 to +50 mm.
    sweep = [ControlPoint(np.stack([np.full(n_pairs, lo), np.full(n_pairs, lo + 20.0)]), (-50.0, 70.0),
                          (-25.0, 25.0), w)
             for lo, w in ((-50.0, 0.0), (0.0, 0.5), (50.0, 1.0))]
    dmlc_beam = PlanBeam("DMLC 288", 3, 288.0, 0.0, 350.0, (1.5, -20.25, 7.75), tuple(sweep), 250.0, "DYNAMIC", 10.0)
    return PlanData(
        label="RTGRID-TEST", machine_name="RTGRID6MV", leaf_boundaries_mm=boundaries,
        beams=(static_beam, sns_beam, dmlc_beam), prescription_gy=60.0, fractions=30,
        referenced_rtstruct_uid=RTSTRUCT_UID, sad_mm=1000.0, patient_position="HFS",
        machine_model_id="rtgrid-standard-6mv",
    )


def assert_plans_equal(a: PlanData, b: PlanData, atol: float = 0.0) -> None:
    for field in ("label", "machine_name", "prescription_gy", "fractions", "referenced_rtstruct_uid", "sad_mm",
                  "patient_position", "machine_model_id", "leaf_boundaries_mm"):
        assert getattr(a, field) == getattr(b, field), field
    assert len(a.beams) == len(b.beams)
    for x, y in zip(a.beams, b.beams):
        for field in ("name", "number", "gantry_deg", "collimator_deg", "couch_deg", "isocenter_mm", "meterset_mu",
                      "kind", "nominal_energy_mv"):
            assert getattr(x, field) == getattr(y, field), (x.name, field)
        assert len(x.control_points) == len(y.control_points)
        for p, q in zip(x.control_points, y.control_points):
            np.testing.assert_allclose(p.leaf_positions_mm, q.leaf_positions_mm, rtol=0, atol=atol)
            np.testing.assert_allclose(p.jaw_x_mm + p.jaw_y_mm, q.jaw_x_mm + q.jaw_y_mm, rtol=0, atol=atol)
            # A weight is a ratio of MU: 16 characters hold it to 1e-14.
            assert abs(p.cumulative_weight - q.cumulative_weight) <= max(atol, 1e-14)


@pytest.fixture(scope="module")
def written(series, boundaries, tmp_path_factory) -> tuple[Path, str]:
    uid = generate_uid()
    ds = write_rtplan(example_plan(boundaries), series, sop_instance_uid=uid)
    path = tmp_path_factory.mktemp("rtplan") / "rtplan.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, uid


def test_dciodvfy_finds_no_error(written) -> None:
    lines = dciodvfy_lines(written[0])
    assert any("RTPlan" in line or "RT Plan" in line for line in lines), lines[:5]
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def test_our_plan_round_trips_exactly(written, boundaries) -> None:
    assert_plans_equal(read_rtplan(pydicom.dcmread(written[0])), example_plan(boundaries))


def test_plan_files_under_the_ct_and_its_structure_set(written, series) -> None:
    ds = pydicom.dcmread(written[0])
    assert ds.SOPClassUID == RT_PLAN_STORAGE and ds.Modality == "RTPLAN" and ds.SOPInstanceUID == written[1]
    assert ds.StudyInstanceUID == series.study_instance_uid
    assert ds.FrameOfReferenceUID == series.frame_of_reference_uid
    assert ds.PatientID == series.patient_id and ds.SeriesInstanceUID != series.series_instance_uid
    assert ds.RTPlanGeometry == "PATIENT"
    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == RTSTRUCT_UID
    assert ds.PatientSetupSequence[0].PatientPosition == "HFS"
    assert float(ds.DoseReferenceSequence[0].TargetPrescriptionDose) == 60.0
    group = ds.FractionGroupSequence[0]
    assert int(group.NumberOfFractionsPlanned) == 30 and int(group.NumberOfBeams) == 3
    assert [float(b.BeamMeterset) for b in group.ReferencedBeamSequence] == [100.0, 67.75, 250.0]


def test_beam_attributes_as_dicom_wants_them(written, boundaries) -> None:
    ds = pydicom.dcmread(written[0])
    plan = example_plan(boundaries)
    for beam_ds, beam in zip(ds.BeamSequence, plan.beams):
        assert beam_ds.BeamType == beam.kind and beam_ds.RadiationType == "PHOTON"
        assert beam_ds.TreatmentMachineName == "RTGRID6MV" and beam_ds.PrimaryDosimeterUnit == "MU"
        assert float(beam_ds.SourceAxisDistance) == 1000.0
        devices = {d.RTBeamLimitingDeviceType: d for d in beam_ds.BeamLimitingDeviceSequence}
        assert set(devices) == {"ASYMX", "ASYMY", "MLCX"}
        assert int(devices["MLCX"].NumberOfLeafJawPairs) == 60
        assert [float(v) for v in devices["MLCX"].LeafPositionBoundaries] == list(boundaries)
        cps = beam_ds.ControlPointSequence
        assert int(beam_ds.NumberOfControlPoints) == len(cps) == len(beam.control_points)
        first = cps[0]
        assert float(first.NominalBeamEnergy) == beam.nominal_energy_mv
        assert float(first.GantryAngle) == beam.gantry_deg and first.GantryRotationDirection == "NONE"
        assert float(first.BeamLimitingDeviceAngle) == beam.collimator_deg
        assert float(first.PatientSupportAngle) == beam.couch_deg
        assert [float(v) for v in first.IsocenterPosition] == list(beam.isocenter_mm)
        positions = {d.RTBeamLimitingDeviceType: d.LeafJawPositions for d in first.BeamLimitingDevicePositionSequence}
        # All X1 leaves (bank on the negative side) first, then all X2 leaves.
        leaves = np.array([float(v) for v in positions["MLCX"]])
        np.testing.assert_array_equal(leaves[:60], beam.control_points[0].leaf_positions_mm[0])
        np.testing.assert_array_equal(leaves[60:], beam.control_points[0].leaf_positions_mm[1])
        weights = [float(cp.CumulativeMetersetWeight) for cp in cps]
        assert weights[0] == 0.0 and weights[-1] == 1.0 and np.all(np.diff(weights) >= 0)
        assert float(beam_ds.FinalCumulativeMetersetWeight) == 1.0


def test_step_and_shoot_is_pairs_of_equal_apertures(written) -> None:
    beam = pydicom.dcmread(written[0]).BeamSequence[1]
    cps = beam.ControlPointSequence
    assert len(cps) == 6
    weights = [float(cp.CumulativeMetersetWeight) for cp in cps]
    np.testing.assert_allclose(weights, [0, 20 / 67.75, 20 / 67.75, 55.5 / 67.75, 55.5 / 67.75, 1], atol=1e-15)
    for start in (0, 2, 4):
        # The second control point of a segment repeats nothing: its leaves stay where they are.
        assert "BeamLimitingDevicePositionSequence" in cps[start]
        assert "BeamLimitingDevicePositionSequence" not in cps[start + 1]
    # Segment 3 closes the Y1 jaw to -30 mm: that control point carries the new jaw and leaves only.
    types = [d.RTBeamLimitingDeviceType for d in cps[4].BeamLimitingDevicePositionSequence]
    assert types == ["ASYMY", "MLCX"]


def test_rtdose_references_the_plan_uid_given_in_advance(written, series) -> None:
    grid = Volume(np.zeros((2, 3, 4), dtype=np.float32), series.volume.origin_mm, (5.0, 5.0, 5.0))
    dose = write_rtdose(np.ones(grid.shape), grid, series, referenced_rtplan_uid=written[1])
    assert dose.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == pydicom.dcmread(written[0]).SOPInstanceUID


def test_arbitrary_floats_round_trip_within_a_nanometre(series, boundaries, tmp_path) -> None:
    rng = np.random.default_rng(3)
    n_pairs = len(boundaries) - 1
    x1 = rng.uniform(-100, 0, n_pairs)
    leaves = np.stack([x1, x1 + rng.uniform(0, 100, n_pairs)])
    points, meterset = step_and_shoot_control_points(
        [leaves, leaves - 1 / 3], [(-100 / 3, 100 / 7)] * 2, [(-np.pi * 10, np.e * 10)] * 2, [1 / 3, 2 / 7]
    )
    beam = PlanBeam("B", 1, 359.99999999999, 1 / 3, 0.0, (np.pi, -np.e, 1 / 7), points, meterset, "DYNAMIC")
    plan = PlanData("P", "M", boundaries, (beam,), 2 / 3 * 100, 3, RTSTRUCT_UID)
    path = tmp_path / "plan.dcm"
    write_rtplan(plan, series).save_as(path, enforce_file_format=True)
    back = read_rtplan(pydicom.dcmread(path))
    for p, q in zip(back.beams[0].control_points, points):
        np.testing.assert_allclose(p.leaf_positions_mm, q.leaf_positions_mm, rtol=0, atol=1e-9)
        np.testing.assert_allclose(p.jaw_x_mm + p.jaw_y_mm, q.jaw_x_mm + q.jaw_y_mm, rtol=0, atol=1e-9)
        assert abs(p.cumulative_weight - q.cumulative_weight) < 1e-12
    assert abs(back.beams[0].meterset_mu - meterset) < 1e-12 and abs(back.prescription_gy - 200 / 3) < 1e-12
    np.testing.assert_allclose(back.beams[0].isocenter_mm, beam.isocenter_mm, rtol=0, atol=1e-9)


@pytest.fixture(scope="module")
def commercial(dicompyler_dir) -> pydicom.Dataset:
    return pydicom.dcmread(dicompyler_dir / "rtplan.dcm")


def test_commercial_plan_is_read_as_its_file_says(commercial) -> None:
    plan = read_rtplan(commercial)
    assert plan.label == str(commercial.RTPlanLabel) and plan.machine_name == "txmachine"
    assert plan.n_pairs == 60 and plan.fractions == 7 and plan.prescription_gy == 14.0
    assert plan.referenced_rtstruct_uid == commercial.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID
    assert [b.name for b in plan.beams] == ["3 RAO", "4 AP", "5 LAO", "6 LPO"]
    assert [b.meterset_mu for b in plan.beams] == [97.0, 87.0, 89.0, 94.0]
    for beam, beam_ds in zip(plan.beams, commercial.BeamSequence):
        cps = beam_ds.ControlPointSequence
        assert beam.kind == "DYNAMIC" and len(beam.control_points) == len(cps)
        assert beam.gantry_deg == float(cps[0].GantryAngle)
        assert beam.nominal_energy_mv == float(cps[0].NominalBeamEnergy)
        # Jaws are given on the first control point only and carry forward.
        jaws = {d.RTBeamLimitingDeviceType: [float(v) for v in d.LeafJawPositions]
                for d in cps[0].BeamLimitingDevicePositionSequence}
        assert all(cp.jaw_x_mm == tuple(jaws["ASYMX"]) and cp.jaw_y_mm == tuple(jaws["ASYMY"])
                   for cp in beam.control_points)
        last = np.array([float(v) for v in cps[-1].BeamLimitingDevicePositionSequence[0].LeafJawPositions])
        np.testing.assert_array_equal(beam.control_points[-1].leaf_positions_mm.ravel(), last)
        weights = [float(cp.CumulativeMetersetWeight) for cp in cps]
        assert [cp.cumulative_weight for cp in beam.control_points] == weights


def test_commercial_plan_round_trips_through_our_writer(commercial, series, tmp_path) -> None:
    plan = read_rtplan(commercial)
    path = tmp_path / "reexported.dcm"
    write_rtplan(plan, series).save_as(path, enforce_file_format=True)
    assert_plans_equal(read_rtplan(pydicom.dcmread(path)), plan)
    errors = [line for line in dciodvfy_lines(path) if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def test_invalid_plans_are_refused_with_the_beam_and_control_point(series, boundaries) -> None:
    plan = example_plan(boundaries)
    beam = plan.beams[1]
    crossed = np.array(beam.control_points[2].leaf_positions_mm)
    crossed[:, 10] = (5.0, -5.0)
    points = list(beam.control_points)
    points[2] = ControlPoint(crossed, points[2].jaw_x_mm, points[2].jaw_y_mm, points[2].cumulative_weight)
    bad = PlanData(plan.label, plan.machine_name, boundaries, (PlanBeam(beam.name, 2, 0, 0, 0, (0, 0, 0), tuple(points),
                                                                        10.0, "DYNAMIC"),), 60.0, 30, RTSTRUCT_UID)
    with pytest.raises(RtPlanError, match=r"beam 2 \('IMRT 72'\) control point 2: leaf pair 11"):
        write_rtplan(bad, series)
    static = PlanBeam("S", 1, 0, 0, 0, (0, 0, 0), beam.control_points, 10.0, "STATIC")
    with pytest.raises(RtPlanError, match="STATIC but control point 2"):
        write_rtplan(PlanData("P", "M", boundaries, (static,), None, 1, RTSTRUCT_UID), series)
    with pytest.raises(RtPlanError, match="requires the structure set"):
        write_rtplan(PlanData("P", "M", boundaries, plan.beams, None, 1), series)
    with pytest.raises(RtPlanError, match="16 characters"):
        write_rtplan(PlanData("P", "rtgrid-standard-6mv", boundaries, plan.beams, None, 1, RTSTRUCT_UID), series)
    short = tuple(ControlPoint(p.leaf_positions_mm, p.jaw_x_mm, p.jaw_y_mm, p.cumulative_weight * 0.9)
                  for p in beam.control_points)
    with pytest.raises(RtPlanError, match="from 0 to 1"):
        write_rtplan(PlanData("P", "M", boundaries, (PlanBeam("B", 1, 0, 0, 0, (0, 0, 0), short, 5.0, "DYNAMIC"),),
                              None, 1, RTSTRUCT_UID), series)


def test_other_objects_are_not_read_as_plans(dicompyler_dir) -> None:
    with pytest.raises(RtPlanError, match="not a photon RT Plan"):
        read_rtplan(pydicom.dcmread(dicompyler_dir / "rtss.dcm"))
