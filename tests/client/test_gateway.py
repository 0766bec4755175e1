"""The gateway without a grid: rules, the spool's quiet period, C-STORE in and out over real DICOM
associations on loopback, and a series kept on disk (retried with backoff) while the master is
unreachable."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from rtgrid.client.gateway.dicomnet import Destination, PushError, StoreServer, push
from rtgrid.client.gateway.rules import RulesError, SeriesInfo, choose, load_rules, make_rule
from rtgrid.client.gateway.service import Gateway
from rtgrid.client.gateway.spool import Spool
from rtgrid.client.sdk import Client


def _ct_series(folder: Path, n: int = 3) -> list[Path]:
    """``n`` CT instances of one series (pydicom's CT_small with new SOP instance UIDs)."""
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    paths = []
    for i in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = i + 1
        paths.append(folder / f"CT{i}.dcm")
        ds.save_as(paths[-1])
    return paths


def test_rules_first_match_wins(tmp_path):
    order = tmp_path / "order.yaml"
    order.write_text("prescription: {target: PTV, dose_gy: 60, fractions: 30}\n")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        "rules:\n"
        "  - match: {calling_ae: ct_sim, body_part: 'CHEST*'}\n"
        "    kind: full\n    order: order.yaml\n    devices: auto:2\n"
        "  - match: {modality: MR}\n    skip: true\n"
        "  - match: {series_description: '*head*neck*'}\n    models: [hn-parotids, rtgrid-abdomen-2d@0.1.0]\n")
    rules = load_rules(rules_file) + [make_rule("contour")]
    full = choose(rules, SeriesInfo("CT_SIM", "CT", "Thorax 2mm", "CHEST"))
    assert full.kind == "full" and full.job_params() == {"order": order.read_text(), "devices": "auto:2"}
    assert choose(rules, SeriesInfo("CT_SIM", "MR", "", "")).skip
    hn = choose(rules, SeriesInfo("OTHER", "CT", "Head and Neck", "HEAD"))
    assert hn.job_params() == {"models": "hn-parotids,rtgrid-abdomen-2d@0.1.0"}
    assert choose(rules, SeriesInfo("OTHER", "CT", "Pelvis", "")).name == ""  # the default rule


@pytest.mark.parametrize("text, problem", [
    ("rules: [{kind: plan}]", "needs an order"),
    ("rules: [{kind: dose}]", "kind 'dose'"),
    ("rules: [{match: {station: X}}]", "unknown match key 'station'"),
    ("rules: [{kinds: contour}]", "unknown field 'kinds'"),
    ("rules: [{kind: full, order: missing.yaml}]", "cannot read the order"),
    ("- a list", "'rules' list"),
])
def test_bad_rules_are_named(tmp_path, text, problem):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RulesError, match=problem):
        load_rules(path)


def test_destination_parsing():
    assert Destination.parse("TPS@10.0.0.5:104") == Destination("TPS", "10.0.0.5", 104)
    for bad in ("TPS@host", "host:104", "A_VERY_LONG_AE_TITLE_X@h:1", "TPS@h:0"):
        with pytest.raises(ValueError):
            Destination.parse(bad)


def test_series_kept_and_retried_while_the_master_is_unreachable(tmp_path):
    spool = Spool(tmp_path / "spool", quiet_s=0.5)
    records: list[dict] = []
    with Client("127.0.0.1:1", attempts=1) as client:  # nothing listens on port 1
        gateway = Gateway(client, spool, [make_rule("contour")], [], "RTGRID", report=records.append)
        server = StoreServer("RTGRID", "127.0.0.1", 0, gateway.on_store, ["PACS"])
        stop = threading.Event()
        loop = threading.Thread(target=gateway.run, args=(stop,))
        loop.start()
        try:
            files = _ct_series(tmp_path / "ct")
            assert push(files, Destination("RTGRID", "127.0.0.1", server.port), "PACS") == 3
            with pytest.raises(PushError, match="rejected"):  # a calling AE that is not accepted
                push(files, Destination("RTGRID", "127.0.0.1", server.port), "STRANGER")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ready = spool.pending()
                if ready and spool.state(ready[0]).get("attempts", 0) >= 2:
                    break
                time.sleep(0.2)
        finally:
            stop.set()
            loop.join(30)
            server.close()
    [folder] = spool.pending()
    state = spool.state(folder)
    assert state["step"] == "upload" and state["attempts"] >= 2 and "UNAVAILABLE" in state["last_error"]
    assert state["instances"] == 3 and state["info"]["calling_ae"] == "PACS"
    assert state["next_try"] > time.time() - 1  # backing off, not spinning
    kept = sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in spool.instances(folder))
    assert kept == sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in files)
    assert records == []
    # A restarted gateway finds the series where it was.
    assert Spool(tmp_path / "spool", quiet_s=0.5).pending() == [folder]
    assert json.loads((folder / "state.json").read_text())["series_uid"] == str(pydicom.dcmread(files[0]).SeriesInstanceUID)
