"""Device registry: seeded from the catalog, congestion-ordered choice, reroute, clear refusals."""

from __future__ import annotations

import pytest

from rtgrid.master import devices
from rtgrid.master.errors import InvalidArgument, NotFound
from rtgrid.master.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "rtgrid.sqlite")
    assert devices.seed_from_catalog(s) == 4
    yield s
    s.close()


def test_catalog_has_three_real_mlc_families_and_seeds_short_names(store):
    models = {e.model_id: e for e in devices.catalog()}
    assert {e.leaf_pairs for e in models.values()} >= {40, 60, 80}
    assert min(e.min_leaf_width_mm for e in models.values()) == 2.5  # the high-definition MLC
    assert all(len(d.device_id) <= 16 for d in store.list_devices())  # DICOM Treatment Machine Name
    assert devices.seed_from_catalog(store) == 0  # only an empty registry is seeded


def test_auto_picks_idle_then_shortest_queue_and_skips_down(store):
    devices.set_device(store, "TB-M120", status="busy", queue_length=0)
    devices.set_device(store, "TB-HD120", queue_length=5)
    devices.set_device(store, "VERSA-AGILITY", queue_length=2)
    devices.set_device(store, "SYNERGY-MLCI2", status="down")
    assert devices.resolve_devices(store, "auto", "county") == ["VERSA-AGILITY"]
    assert devices.resolve_devices(store, "auto:3", "county") == ["VERSA-AGILITY", "TB-HD120", "TB-M120"]
    with pytest.raises(InvalidArgument, match="3 devices are usable"):
        devices.resolve_devices(store, "auto:4", "county")
    assert devices.reroute(store, "SYNERGY-MLCI2", {"VERSA-AGILITY"}, "county") == "TB-HD120"
    # The user's rules: the shortest queue whether idle or busy, or named devices first.
    assert devices.resolve_devices(store, "auto", "county", "shortest_queue") == ["TB-M120"]
    assert devices.resolve_devices(store, "auto:2", "county", "prefer:SYNERGY-MLCI2,TB-HD120") == ["TB-HD120", "VERSA-AGILITY"]
    with pytest.raises(InvalidArgument, match="device_rule"):
        devices.resolve_devices(store, "auto", "county", "cheapest")


def test_named_devices_and_refusals(store):
    assert devices.resolve_devices(store, "TB-M120, VERSA-AGILITY", "county") == ["TB-M120", "VERSA-AGILITY"]
    with pytest.raises(InvalidArgument, match="unknown device"):
        devices.resolve_devices(store, "TB-M120,LINAC-9", "county")
    with pytest.raises(InvalidArgument, match="distinct"):
        devices.resolve_devices(store, "TB-M120,TB-M120", "county")
    with pytest.raises(NotFound, match="hospital and model"):
        devices.set_device(store, "NEW-LINAC", status="available")
    with pytest.raises(InvalidArgument, match="device model"):
        devices.set_device(store, "NEW-LINAC", hospital="county", model_id="no-such-model")
    with pytest.raises(InvalidArgument, match="16 characters"):
        devices.set_device(store, "A-VERY-LONG-LINAC-NAME", hospital="county", model_id="varian-truebeam-m120-6x")
    added = devices.set_device(store, "COUNTY-1", hospital="county", model_id="varian-truebeam-m120-6x")
    assert (added.status, added.queue_length) == ("available", 0)


def test_a_hospital_uses_its_own_and_the_shared_devices_only(store):
    devices.set_device(store, "COUNTY-1", hospital="county", model_id="varian-truebeam-m120-6x")
    devices.set_device(store, "CITY-1", hospital="city", model_id="varian-truebeam-m120-6x", queue_length=0)
    for name in ("TB-M120", "TB-HD120", "VERSA-AGILITY", "SYNERGY-MLCI2"):  # the shared ones, busy
        devices.set_device(store, name, status="busy", queue_length=9)
    assert devices.resolve_devices(store, "auto", "county") == ["COUNTY-1"]
    assert "CITY-1" not in devices.resolve_devices(store, "auto:5", "county")
    with pytest.raises(InvalidArgument, match="5 devices are usable"):  # its own and the 4 shared
        devices.resolve_devices(store, "auto:6", "city")
    # Another hospital's device is unknown to this one, and not named in the refusal.
    with pytest.raises(InvalidArgument, match="unknown device.s. CITY-1") as refused:
        devices.resolve_devices(store, "CITY-1", "county")
    assert "CITY-1" not in str(refused.value).partition("registered:")[2]
    devices.set_device(store, "COUNTY-1", status="down")
    assert devices.reroute(store, "COUNTY-1", set(), "county") != "CITY-1"
