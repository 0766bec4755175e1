"""A corpus of malformed inputs, built from a good phantom series so every file stays small.

Each entry names what is wrong, how to make it, the gRPC status the master must answer with and
words its message must contain. The files are built on demand (by ``build_dicom_case``) rather
than committed, so the corpus follows the phantom writer and never goes stale; ``python -m
tests.corpus OUT`` writes the whole DICOM corpus to a folder for inspection.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

Builder = Callable[[Path, Path], str]  # (good series folder, output folder) -> the file the message names


@dataclass(frozen=True)
class DicomCase:
    """One malformed upload: ``build`` writes a folder; the master must refuse it."""

    name: str
    build: Builder
    status: str  # grpc.StatusCode name
    words: tuple[str, ...]


def _files(folder: Path) -> list[Path]:
    """The slices of a folder ordered along z (head to feet as the phantom writes them)."""
    return sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def _edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> str:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)
    return path.name


def _edit_all(folder: Path, change: Callable[[pydicom.Dataset], None]) -> str:
    names = [_edit(p, change) for p in _files(folder)]
    return names[0]


def _set(keyword: str, value) -> Callable[[pydicom.Dataset], None]:
    def change(ds: pydicom.Dataset) -> None:
        setattr(ds, keyword, value)

    return change


def truncated_header(good: Path, out: Path) -> str:
    victim = _files(out)[3]
    victim.write_bytes(victim.read_bytes()[:300])
    return victim.name


def truncated_pixels(good: Path, out: Path) -> str:
    victim = _files(out)[3]
    victim.write_bytes(victim.read_bytes()[:-500])
    return victim.name


def garbage_after_prefix(good: Path, out: Path) -> str:
    (out / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 8)
    return "junk.dcm"


def not_dicom(good: Path, out: Path) -> str:
    (out / "letter.dcm").write_bytes(b"%PDF-1.4 referral letter, not an image\n" * 30)
    return "letter.dcm"


def empty_file(good: Path, out: Path) -> str:
    (out / "empty.dcm").write_bytes(b"")
    return "empty.dcm"


def wrong_modality_mr(good: Path, out: Path) -> str:
    return _edit_all(out, _set("Modality", "MR"))


def rtdose_among_ct(good: Path, out: Path) -> str:
    shutil.copy(get_testdata_file("rtdose.dcm"), out / "dose.dcm")
    return "dose.dcm"


def two_patients_one_series(good: Path, out: Path) -> str:
    return _edit(_files(out)[4], _set("PatientID", "SOMEONE-ELSE"))


def pixel_spacing_differs(good: Path, out: Path) -> str:
    return _edit(_files(out)[5], _set("PixelSpacing", [2.5, 2.5]))


def orientation_differs(good: Path, out: Path) -> str:
    return _edit(_files(out)[5], _set("ImageOrientationPatient", [1, 0, 0, 0, 0.8, -0.6]))


def orientation_not_orthonormal(good: Path, out: Path) -> str:
    return _edit_all(out, _set("ImageOrientationPatient", [1, 0, 0, 0.5, 1, 0]))


def irregular_slice_step(good: Path, out: Path) -> str:
    def shift(ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 1.2]

    return _edit(_files(out)[6], shift)


def duplicate_position(good: Path, out: Path) -> str:
    files = _files(out)
    position = pydicom.dcmread(files[4], stop_before_pixels=True).ImagePositionPatient
    return _edit(files[5], _set("ImagePositionPatient", list(position)))


def enormous_dimensions(good: Path, out: Path) -> str:
    # The header claims 65535 x 65535 pixels (8 GiB of int16); the pixel data is the small slice.
    def change(ds: pydicom.Dataset) -> None:
        ds.Rows, ds.Columns = 65535, 65535

    return _edit(_files(out)[2], change)


def nan_pixel_spacing(good: Path, out: Path) -> str:
    return _edit(_files(out)[2], _set("PixelSpacing", ["NaN", "NaN"]))


def negative_pixel_spacing(good: Path, out: Path) -> str:
    return _edit_all(out, _set("PixelSpacing", [-4.0, -4.0]))


def nan_position(good: Path, out: Path) -> str:
    return _edit(_files(out)[2], _set("ImagePositionPatient", [0.0, "NaN", 10.0]))


def nan_rescale_slope(good: Path, out: Path) -> str:
    return _edit(_files(out)[2], _set("RescaleSlope", "NaN"))


def zero_rescale_slope(good: Path, out: Path) -> str:
    return _edit(_files(out)[2], _set("RescaleSlope", "0"))


def missing_position(good: Path, out: Path) -> str:
    def change(ds: pydicom.Dataset) -> None:
        del ds.ImagePositionPatient

    return _edit(_files(out)[2], change)


def missing_slice(good: Path, out: Path) -> str:
    files = _files(out)
    files[6].unlink()
    return files[5].name


DICOM_CASES: tuple[DicomCase, ...] = (
    DicomCase("truncated-header", truncated_header, "INVALID_ARGUMENT", ("trunc",)),
    DicomCase("truncated-pixels", truncated_pixels, "INVALID_ARGUMENT", ("trunc",)),
    DicomCase("garbage-after-prefix", garbage_after_prefix, "INVALID_ARGUMENT", ()),
    DicomCase("not-dicom", not_dicom, "INVALID_ARGUMENT", ("not", "dicom")),
    DicomCase("empty-file", empty_file, "INVALID_ARGUMENT", ("size",)),
    DicomCase("wrong-modality-mr", wrong_modality_mr, "INVALID_ARGUMENT", ("modality", "mr")),
    DicomCase("rtdose-among-ct", rtdose_among_ct, "INVALID_ARGUMENT", ("rtdose",)),
    DicomCase("two-patients", two_patients_one_series, "INVALID_ARGUMENT", ("patient",)),
    DicomCase("pixel-spacing-differs", pixel_spacing_differs, "INVALID_ARGUMENT", ("pixelspacing", "differs")),
    DicomCase("orientation-differs", orientation_differs, "INVALID_ARGUMENT", ("imageorientationpatient",)),
    DicomCase("orientation-not-orthonormal", orientation_not_orthonormal, "INVALID_ARGUMENT", ("orthogonal",)),
    DicomCase("irregular-slice-step", irregular_slice_step, "INVALID_ARGUMENT", ("slice step",)),
    DicomCase("duplicate-position", duplicate_position, "INVALID_ARGUMENT", ("duplicate",)),
    DicomCase("enormous-dimensions", enormous_dimensions, "INVALID_ARGUMENT", ("pixel",)),
    DicomCase("nan-pixel-spacing", nan_pixel_spacing, "INVALID_ARGUMENT", ("pixelspacing", "finite")),
    DicomCase("negative-pixel-spacing", negative_pixel_spacing, "INVALID_ARGUMENT", ("pixelspacing", "positive")),
    DicomCase("nan-position", nan_position, "INVALID_ARGUMENT", ("imagepositionpatient", "finite")),
    DicomCase("nan-rescale-slope", nan_rescale_slope, "INVALID_ARGUMENT", ("rescaleslope",)),
    DicomCase("zero-rescale-slope", zero_rescale_slope, "INVALID_ARGUMENT", ("rescaleslope",)),
    DicomCase("missing-position", missing_position, "INVALID_ARGUMENT", ("imagepositionpatient", "missing")),
    DicomCase("missing-slice", missing_slice, "INVALID_ARGUMENT", ("missing",)),
)


def build_dicom_case(case: DicomCase, good: Path, out: Path) -> tuple[Path, str]:
    """Copy the good series to ``out`` and break it as ``case`` says; returns the folder and the
    file name the master's message must contain."""
    shutil.copytree(good, out)
    return out, case.build(good, out)


# Medical orders and job parameters a full job (auto contours, then a plan) must refuse, on a case
# holding the phantom's manual contours.
GOOD_ORDER = "prescription: {target: PTV, dose_gy: 60, fractions: 30}\n"
BAD_PLAN_PARAMS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "order-unknown-structure": ({"order": "prescription: {target: GTV_left_toe, dose_gy: 60, fractions: 30}\n"},
                                ("unknown structure", "gtv_left_toe")),
    "order-negative-dose": ({"order": "prescription: {target: PTV, dose_gy: -60, fractions: 30}\n"},
                            ("dose_gy", "positive")),
    "order-nan-dose": ({"order": "prescription: {target: PTV, dose_gy: .nan, fractions: 30}\n"},
                       ("dose_gy", "finite")),
    "order-dose-in-cgy": ({"order": "prescription: {target: PTV, dose_gy: 6000, fractions: 30}\n"},
                          ("dose_gy", "6000")),
    "order-impossible-fraction": ({"order": "prescription: {target: PTV, dose_gy: 60, fractions: 1}\n"},
                                  ("per fraction",)),
    "order-zero-fractions": ({"order": "prescription: {target: PTV, dose_gy: 60, fractions: 0}\n"}, ("fractions",)),
    "order-not-yaml": ({"order": "prescription: [unclosed\n"}, ("yaml",)),
    "order-server-path": ({"order": "/etc/rtgrid/order.yaml"}, ("order", "text")),
    "order-missing": ({}, ("order",)),
    "unknown-machine": ({"order": GOOD_ORDER, "machine": "Cobalt-60-Theratron"}, ("machine", "cobalt-60-theratron")),
    "unknown-device": ({"order": GOOD_ORDER, "devices": "LINAC-ON-THE-MOON"}, ("device", "linac-on-the-moon")),
    "bad-device-rule": ({"order": GOOD_ORDER, "devices": "auto", "device_rule": "cheapest"}, ("cheapest",)),
    "nan-bixel": ({"order": GOOD_ORDER, "bixel_mm": "nan"}, ("bixel_mm",)),
    "negative-dose-grid": ({"order": GOOD_ORDER, "dose_grid_mm": "-3"}, ("dose_grid_mm",)),
    "unknown-param": ({"order": GOOD_ORDER, "warp_drive": "on"}, ("warp_drive",)),
    "unknown-body": ({"order": GOOD_ORDER, "body": "EXTERNAL_XYZ"}, ("external_xyz",)),
}


# Requests with one field far over its size limit (issue 17): each is refused INVALID_ARGUMENT with a
# message naming the field and its limit, before anything is looked up or stored.
@dataclass(frozen=True)
class OversizedField:
    name: str
    service: str  # hospital | admin
    method: str
    build: Callable[[str], object]  # a committed case id -> the request
    words: tuple[str, ...]
    streaming: str = ""  # "", "client" (a request stream) or "server" (a response stream)

    def call(self, method, request, timeout: float = 60):
        if self.streaming == "client":
            return method(iter([request]), timeout=timeout)
        if self.streaming == "server":
            return list(method(request, timeout=timeout))
        return method(request, timeout=timeout)


def _oversized_fields() -> tuple[OversizedField, ...]:
    from rtgrid.protos.v1 import admin_pb2, hospital_pb2

    h, a = hospital_pb2, admin_pb2
    mb = "x" * 1_200_000
    return (
        OversizedField("label", "hospital", "CreateCase", lambda c: h.CreateCaseRequest(label="x" * 100_000),
                       ("label", "256")),
        OversizedField("idempotency-key", "hospital", "SubmitJob",
                       lambda c: h.SubmitJobRequest(case_id=c, kind="contour", idempotency_key=mb),
                       ("idempotency_key", "128")),
        OversizedField("case-id", "hospital", "GetCase", lambda c: h.GetCaseRequest(case_id=c + mb), ("case_id", "64")),
        OversizedField("kind", "hospital", "SubmitJob", lambda c: h.SubmitJobRequest(case_id=c, kind="k" * 10_000),
                       ("kind", "32")),
        OversizedField("params-entries", "hospital", "SubmitJob",
                       lambda c: h.SubmitJobRequest(case_id=c, kind="contour",
                                                    params={f"p{i}": "1" for i in range(1000)}),
                       ("params", "32 entries")),
        OversizedField("params-key", "hospital", "SubmitJob",
                       lambda c: h.SubmitJobRequest(case_id=c, kind="contour", params={"k" * 5000: "1"}),
                       ("params key", "64")),
        OversizedField("params-order", "hospital", "SubmitJob",
                       lambda c: h.SubmitJobRequest(case_id=c, kind="plan",
                                                    params={"order": "# " + "x" * 200_000 + "\n"}),
                       ("params['order']", "65536")),
        OversizedField("params-value", "hospital", "SubmitJob",
                       lambda c: h.SubmitJobRequest(case_id=c, kind="contour", params={"shards": "9" * 50_000}),
                       ("params['shards']", "1024")),
        OversizedField("file-name", "hospital", "StartUpload",
                       lambda c: h.StartUploadRequest(case_id=c, file_name="f" * 10_000, size_bytes=1, sha256="0" * 64),
                       ("file_name", "255")),
        OversizedField("sha256", "hospital", "StartUpload",
                       lambda c: h.StartUploadRequest(case_id=c, file_name="a.dcm", size_bytes=1, sha256="0" * 10_000),
                       ("sha256", "64")),
        OversizedField("watch-job-id", "hospital", "WatchJob", lambda c: h.WatchJobRequest(job_id=mb),
                       ("job_id", "64"), streaming="server"),
        OversizedField("artifact-id", "hospital", "DownloadArtifact",
                       lambda c: h.DownloadArtifactRequest(artifact_id=mb), ("artifact_id", "64"), streaming="server"),
        OversizedField("upload-id", "hospital", "UploadChunks", lambda c: h.UploadChunk(upload_id=mb, offset=0),
                       ("upload_id", "64"), streaming="client"),
        OversizedField("audit-principal", "admin", "ListAudit", lambda c: a.ListAuditRequest(principal=mb),
                       ("principal", "256")),
        OversizedField("job-states", "admin", "ListJobs", lambda c: a.ListJobsRequest(states=[1] * 1000),
                       ("states", "16")),
        OversizedField("hospital-name", "admin", "AddHospital", lambda c: a.AddHospitalRequest(name=mb),
                       ("name", "64")),
        OversizedField("device-id", "admin", "SetDevice", lambda c: a.SetDeviceRequest(device_id=mb, hospital="h"),
                       ("device_id", "64")),
    )


OVERSIZED_FIELDS = _oversized_fields()


if __name__ == "__main__":
    import sys
    import tempfile

    from rtgrid.engines.phantom import write_phantom_case

    target = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        good_dir = write_phantom_case(Path(tmp), shape=(12, 48, 48), spacing_mm=(4.0, 4.0, 3.0), seed=2).ct_dir
        for entry in DICOM_CASES:
            folder, named = build_dicom_case(entry, good_dir, target / entry.name)
            print(f"{entry.name}: {folder} (names {named})")
