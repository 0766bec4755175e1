"""The plan document a physicist reviews and signs, as PDF (matplotlib's PDF backend, no new
dependency): ``report.pdf`` for the standard plan and ``report.<device>.pdf`` for each device plan.

``report.pdf`` holds the patient and plan identity, the order with each goal met or missed, the
DVH, the dose wash with contours, provenance (rtgrid version, segmentation model hashes, machine
model hash) and prepared / reviewed / approved signature lines. Device plans are made after it,
each in its own shard, so each gets its own section in the same layout: the QA verdict and
reasons, gamma criteria and pass rate, segments, MU and every attempt, the DVH against the
standard plan and the gamma map, provenance and signatures.

Pages are A4 portrait; text is real PDF text (searchable, extractable by ``pdftotext``).
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import pydicom
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.image import imread

from rtgrid.engines.imaging.volume import ImageSeries
from rtgrid.engines.optimization.order import MedicalOrder

PAGE_IN = (8.27, 11.69)
"""A4 portrait, inches."""
MARGIN_IN = 0.7
LINE_IN = 0.21
"""Height of one text line (8 pt monospace with leading)."""
FONT_PT = 8
SIGNATURES = ("Prepared by", "Reviewed by (medical physicist)", "Approved by (radiation oncologist)")
MODEL_ORIGIN = re.compile(r"rtgrid model \S+ sha256 [0-9a-f]+")
"""How a deep model's structures are marked in an RTSTRUCT (see the contour executor)."""


@dataclass(frozen=True)
class Identity:
    """Who and what a report is about, and where it came from."""

    patient_name: str
    patient_id: str
    study_uid: str
    series_uid: str
    plan: str
    plan_uid: str
    machine: str
    machine_hash: str
    structure_set_uid: str
    models: tuple[str, ...]
    rtgrid_version: str
    created_utc: str

    def lines(self) -> list[str]:
        return [
            f"Patient         {self.patient_name or '-'}   ID {self.patient_id or '-'}",
            f"Study UID       {self.study_uid}",
            f"CT series UID   {self.series_uid}",
            f"Structure set   {self.structure_set_uid or '-'}",
            f"Plan            {self.plan}",
            f"Plan UID        {self.plan_uid}",
            f"Machine         {self.machine}",
            f"Created (UTC)   {self.created_utc}",
        ]

    def provenance(self) -> list[str]:
        lines = [f"rtgrid version  {self.rtgrid_version}",
                 f"Machine model   {self.machine}", f"  sha256        {self.machine_hash}"]
        lines += [f"Segmentation    {m}" for m in self.models] or ["Segmentation    no deep model (classical or drawn)"]
        return lines


def rtgrid_version() -> str:
    """The installed rtgrid's version ("unknown" in an uninstalled source tree)."""
    try:
        return version("rtgrid")
    except PackageNotFoundError:
        return "unknown"


def model_provenance(rtstructs: Iterable[bytes]) -> tuple[str, ...]:
    """The deep models (name@version and sha256 prefix) whose structures an RTSTRUCT holds."""
    found: dict[str, None] = {}
    for data in rtstructs:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        for roi in ds.get("StructureSetROISequence", []):
            for keyword in ("ROIGenerationDescription", "ROIDescription"):
                for match in MODEL_ORIGIN.findall(str(roi.get(keyword, "") or "")):
                    found[match.removeprefix("rtgrid model ")] = None
    return tuple(found)


def identity(series: ImageSeries, rtstructs: Sequence[bytes], plan: str, plan_uid: str, machine: str,
             machine_hash: str, structure_set_uid: str = "") -> Identity:
    """The identity block of a report from the CT series and the structure sets the plan used."""
    return Identity(series.patient_name, series.patient_id, series.study_instance_uid, series.series_instance_uid,
                    plan, plan_uid, machine, machine_hash, structure_set_uid, model_provenance(rtstructs),
                    rtgrid_version(), dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))


class _Document:
    """Pages of monospace text lines, flowing onto a new page when one is full, and image pages."""

    def __init__(self, title: str, who: Identity) -> None:
        self.title, self.who = title, who
        self.pages: list[Figure] = []
        self._y = 0.0

    def _new_page(self) -> Figure:
        page = Figure(figsize=PAGE_IN)
        page.text(MARGIN_IN / PAGE_IN[0], 1 - 0.45 / PAGE_IN[1], self.title, fontsize=13, weight="bold", va="top")
        page.text(1 - MARGIN_IN / PAGE_IN[0], 1 - 0.45 / PAGE_IN[1],
                  f"{self.who.patient_id}  page {len(self.pages) + 1}", fontsize=8, ha="right", va="top")
        self.pages.append(page)
        self._y = 1.0 / PAGE_IN[1]  # inches from the top, below the title
        return page

    def _room(self, lines: int) -> Figure:
        if not self.pages or self._y + lines * LINE_IN > PAGE_IN[1] - MARGIN_IN:
            return self._new_page()
        return self.pages[-1]

    def heading(self, text: str) -> None:
        page = self._room(3)
        self._y += LINE_IN * 0.6
        page.text(MARGIN_IN / PAGE_IN[0], 1 - self._y / PAGE_IN[1], text, fontsize=11, weight="bold", va="top")
        self._y += LINE_IN * 1.4

    def lines(self, lines: Iterable[str], color: str = "black") -> None:
        for line in lines:
            page = self._room(1)
            page.text(MARGIN_IN / PAGE_IN[0], 1 - self._y / PAGE_IN[1], line, fontsize=FONT_PT,
                      family="monospace", va="top", color=color)
            self._y += LINE_IN

    def signatures(self) -> None:
        self.heading("Signatures")
        self._room(len(SIGNATURES) * 3)
        for role in SIGNATURES:
            self._y += LINE_IN * 1.2
            self.lines([f"{role + ':':<36} ______________________________   Date: ____________"])

    def image_page(self, caption: str, png: bytes, second: tuple[str, bytes] | None = None) -> None:
        page = self._new_page()
        images = [(caption, png)] + ([second] if second else [])
        height = (1 - 1.2 / PAGE_IN[1] - MARGIN_IN / PAGE_IN[1]) / len(images)
        for i, (text, data) in enumerate(images):
            top = 1 - 1.0 / PAGE_IN[1] - i * height
            page.text(MARGIN_IN / PAGE_IN[0], top, text, fontsize=11, weight="bold", va="top")
            axes = page.add_axes((MARGIN_IN / PAGE_IN[0], top - height + 0.01,
                                  1 - 2 * MARGIN_IN / PAGE_IN[0], height - 0.04))
            axes.imshow(imread(io.BytesIO(data), format="png"))
            axes.set_axis_off()

    def pdf(self) -> bytes:
        buffer = io.BytesIO()
        metadata = {"Title": self.title, "Subject": f"{self.who.plan} {self.who.plan_uid}",
                    "Creator": f"rtgrid {self.who.rtgrid_version}"}
        with PdfPages(buffer, metadata=metadata) as pdf:
            for page in self.pages:
                pdf.savefig(page)
        return buffer.getvalue()


def _goal_lines(goals: Sequence[dict]) -> list[tuple[str, str]]:
    """(line, colour) per goal: MET in green, MISSED in red."""
    out = []
    for g in goals:
        met = bool(g["met"])
        extra = f"  standard plan {g['standard_plan_gy']:7.2f} Gy" if "standard_plan_gy" in g else ""
        hard = "" if "hard" not in g else ("  hard" if g["hard"] else "  soft")
        out.append((f"{'MET' if met else 'MISSED':<7}{g['goal']:<38} achieved {g['achieved_gy']:7.2f} Gy"
                    f"{extra}{hard}", "#1a7f37" if met else "#c62828"))
    return out


def render_plan_report_pdf(who: Identity, order: MedicalOrder, goals: Sequence[dict], dvh_png: bytes,
                           wash_png: bytes, notes: Sequence[str] = ()) -> bytes:
    """``report.pdf`` of a standard plan.

    Parameters
    ----------
    who : Identity
        Patient, plan and provenance (see :func:`identity`).
    order : MedicalOrder
        The order the plan was made against.
    goals : sequence of dict
        Each goal as in ``plan-report.json``: ``goal``, ``achieved_gy``, ``met``.
    dvh_png, wash_png : bytes
        The DVH and the dose wash with contours (PNG).
    notes : sequence of str
        Further lines for the summary (e.g. optimizer figures).

    Returns
    -------
    bytes
        The PDF.
    """
    doc = _Document("Radiotherapy plan report", who)
    doc.heading("Patient and plan")
    doc.lines(who.lines())
    rx = order.prescription
    doc.heading("Medical order")
    doc.lines([f"Prescription    {rx.target}: {rx.dose_gy:g} Gy in {rx.fractions} fractions"]
              + [f"Level           {p.target}: {p.dose_gy:g} Gy" for p in order.lower_levels]
              + [f"Constraint      {c.describe()}" for c in order.constraints])
    missed = sum(1 for g in goals if not g["met"])
    doc.heading(f"Goals: {len(goals) - missed} met, {missed} missed")
    for line, color in _goal_lines(goals):
        doc.lines([line], color)
    if notes:
        doc.heading("Plan")
        doc.lines(notes)
    doc.lines(["", "Device plans, when requested, each have their own section: report.<device>.pdf"])
    doc.heading("Provenance")
    doc.lines(who.provenance())
    doc.signatures()
    doc.image_page("Dose-volume histogram", dvh_png)
    doc.image_page("Dose wash with contours", wash_png)
    return doc.pdf()


def render_device_report_pdf(who: Identity, qa: dict, dvh_png: bytes, gamma_png: bytes) -> bytes:
    """``report.<device>.pdf``: one device plan's section of the plan document.

    Parameters
    ----------
    who : Identity
        Patient, the device plan and its machine model (hash), provenance.
    qa : dict
        The device's ``qa.<device>.json`` content: ``released``, ``reasons``, ``gamma_criteria``,
        ``gamma_pass_rate_pct``, ``segments``, ``total_mu``, ``mu_per_beam``, ``attempts``,
        ``reported_attempt``, ``goals`` and ``coincidence``.
    dvh_png, gamma_png : bytes
        The DVH of the QA dose against the standard plan, and the gamma map (PNG).

    Returns
    -------
    bytes
        The PDF.
    """
    doc = _Document(f"Device plan report: {qa['device']}", who)
    doc.heading("Patient and plan")
    doc.lines(who.lines())
    verdict = "RELEASED (QA passed)" if qa["released"] else "WITHHELD (QA failed: nothing released)"
    doc.heading(f"QA verdict: {verdict}")
    doc.lines([f"Reason          {r}" for r in qa.get("reasons", [])], "#c62828")
    c = qa["gamma_criteria"]
    doc.lines([
        f"Gamma           {c['dose_percent']:g}% / {c['distance_mm']:g} mm, {'global' if c.get('global') else 'local'}, "
        f"threshold {c['threshold_percent']:g}%, pass rate required {c['pass_rate_required_pct']:g}%",
        f"Gamma pass rate {qa['gamma_pass_rate_pct']:.1f}%",
        f"Segments        {qa['segments']}",
        f"MU              {qa['total_mu']:.1f} per fraction; per beam " + ", ".join(f"{m:.1f}" for m in qa["mu_per_beam"]),
        f"Standard plan   {'reused' if qa['coincidence']['reused_standard_plan'] else 're-optimized (dose mimicking)'}"
        f", coincidence {qa['coincidence']['overall']:.2f} (threshold {qa['coincidence']['threshold']:.2f})",
        f"Reported        attempt {qa.get('reported_attempt', len(qa['attempts']))} of {len(qa['attempts'])}",
    ])
    doc.heading("Attempts")
    for a in qa["attempts"]:
        doc.lines([f"{a['attempt']}: {'passed' if a['passed'] else 'failed':<7} gamma {a['gamma_pass_rate_pct']:5.1f}%  "
                   + ("; ".join(a["reasons"]) or "no reason against release")])
    doc.heading("Goals on the QA dose")
    for line, color in _goal_lines(qa.get("goals", [])):
        doc.lines([line], color)
    doc.heading("Provenance")
    doc.lines(who.provenance())
    doc.signatures()
    doc.image_page("DVH: QA dose (solid) against the standard plan (dashed)", dvh_png, ("Gamma", gamma_png))
    return doc.pdf()


def standard_plan_pdf(series: ImageSeries, rtstructs: Sequence[bytes], order: MedicalOrder, report: dict,
                      dvh_png: bytes, wash_png: bytes) -> bytes:
    """``report.pdf`` from what the plan executor has: the CT, the structure sets, the order and
    ``plan-report.json``'s content (``plan_uid``, ``machine``, ``goals``, ``release``, ...)."""
    machine = report["machine"]
    structure_set = pydicom.dcmread(io.BytesIO(rtstructs[-1]), stop_before_pixels=True).SOPInstanceUID if rtstructs else ""
    who = identity(series, rtstructs, "standard plan", report["plan_uid"], f"{machine['id']} {machine['version']}",
                   machine["content_hash"], str(structure_set))
    release = report.get("release", {})
    notes = []
    if release:
        notes.append("Plan RELEASED" if release.get("released") else "Plan WITHHELD: nothing built on it is released")
        notes += [f"  reason: {r}" for r in release.get("reasons", [])]
        notes += [f"  warning: {w}" for w in release.get("warnings", [])]
    notes += [f"Beams           {len(report.get('beams', []))}: gantry "
              + ", ".join(f"{b['gantry_deg']:g}" for b in report.get("beams", [])) + " deg"]
    optimizer = report.get("optimizer", {})
    if optimizer:
        notes.append(f"Optimizer       {optimizer.get('solver', '')}, {optimizer.get('iterations', 0)} iterations, "
                     f"normalization x{optimizer.get('normalization_factor', 1.0):.3f}")
    return render_plan_report_pdf(who, order, report["goals"], dvh_png, wash_png, notes)


def device_plan_pdf(series: ImageSeries, qa: dict, plan_uid: str, machine_hash: str, structure_set_uid: str,
                    dvh_png: bytes, gamma_png: bytes) -> bytes:
    """``report.<device>.pdf`` from what the conversion executor has: the CT and the QA report."""
    who = identity(series, (), f"device plan for {qa['device']}", plan_uid, f"{qa['device']} ({qa['model']})",
                   machine_hash, structure_set_uid)
    return render_device_report_pdf(who, qa, dvh_png, gamma_png)
