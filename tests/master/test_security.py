"""Security pieces without a grid: the private CA of `rtgrid certs`, hashed hospital tokens, the
store's migration, and the refusal of plaintext anywhere but loopback."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import sqlite3
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from rtgrid.master.errors import AlreadyExists, InvalidArgument, NotFound
from rtgrid.master.security import tokens
from rtgrid.master.security.certs import client_role, make_ca, make_client_cert, write_deployment
from rtgrid.master.security.tls import check_insecure_host, is_loopback
from rtgrid.master.store.sqlite import SCHEMA_VERSION, SqliteStore


def _rtgrid(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from rtgrid.client.cli.main import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


def test_certs_command_makes_a_ca_server_agent_and_operator_certificates(tmp_path):
    made = _rtgrid("certs", "--out", str(tmp_path), "--server-name", "grid.example.org", "--server-name", "10.1.2.3",
                   "--agent", "gpu-1", "--agent", "gpu-2", "--operator", "alice")
    assert made.returncode == 0, made.stderr
    files = json.loads(made.stdout)
    ca = x509.load_pem_x509_certificate(open(files["ca"], "rb").read())
    server = x509.load_pem_x509_certificate(open(files["server_cert"], "rb").read())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "grid.example.org"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                            ipaddress.ip_address("10.1.2.3")}
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    for role, name in (("agent", "gpu-1"), ("agent", "gpu-2"), ("operator", "alice")):
        pem = open(files[f"{role}:{name}:cert"], "rb").read()
        cert = x509.load_pem_x509_certificate(pem)
        cert.verify_directly_issued_by(ca)
        assert client_role(pem) == (role, name)
        assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert stat.S_IMODE((tmp_path / f"{role}-{name}.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="role"):
        make_client_cert(make_ca(), "x", "hospital")


def test_a_foreign_ca_does_not_verify(tmp_path):
    ours = write_deployment(tmp_path / "a", [], ["agent"], [])
    theirs = write_deployment(tmp_path / "b", [], ["agent"], [])
    ca = x509.load_pem_x509_certificate(open(ours["ca"], "rb").read())
    foreign = x509.load_pem_x509_certificate(open(theirs["agent:agent:cert"], "rb").read())
    with pytest.raises(Exception):
        foreign.verify_directly_issued_by(ca)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("192.168.1.10", False), ("grid.example.org", False), ("::", False)])
def test_insecure_only_on_loopback(host, loopback):
    assert is_loopback(host) is loopback
    if loopback:
        check_insecure_host(host)
    else:
        with pytest.raises(ValueError, match="loopback"):
            check_insecure_host(host)


def test_up_refuses_plaintext_unless_asked_and_on_loopback(tmp_path):
    plain = _rtgrid("up", "--data", str(tmp_path), "--agents", "0")
    assert plain.returncode == 2 and "--tls-cert" in plain.stderr and "--insecure" in plain.stderr
    exposed = _rtgrid("up", "--data", str(tmp_path), "--agents", "0", "--insecure", "--host", "0.0.0.0")
    assert exposed.returncode == 2 and "loopback" in exposed.stderr
    assert not (tmp_path / "rtgrid.sqlite").exists()  # refused before anything started


def test_agent_needs_a_certificate_or_insecure():
    refused = _rtgrid("agent", "--master", "127.0.0.1:1")
    assert refused.returncode == 2 and "--insecure" in refused.stderr


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "rtgrid.sqlite")
    yield s
    s.close()


def test_tokens_are_random_shown_once_and_kept_as_sha256(store):
    record, token = tokens.add_hospital(store, "st-luke")
    other, other_token = tokens.add_hospital(store, "st-mary")
    assert token != other_token and len(token) >= 40
    assert record.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(store.list_hospitals())
    assert tokens.hospital_for_token(store, token).name == "st-luke"
    assert tokens.hospital_for_token(store, other_token).name == "st-mary"
    assert tokens.hospital_for_token(store, token + "x") is None
    assert tokens.hospital_for_token(store, record.token_sha256) is None  # the digest is not a token
    with pytest.raises(AlreadyExists):
        tokens.add_hospital(store, "st-luke")
    with pytest.raises(InvalidArgument):
        tokens.add_hospital(store, "../etc")
    with pytest.raises(NotFound):
        tokens.revoke_hospital(store, "nobody")
    assert tokens.revoke_hospital(store, "st-luke").revoked_ms > 0
    assert tokens.hospital_for_token(store, token) is None
    _, fresh = tokens.add_hospital(store, "st-luke")  # a revoked hospital gets a new token
    assert tokens.hospital_for_token(store, fresh).name == "st-luke" and tokens.hospital_for_token(store, token) is None


def test_token_cache_holds_live_tokens_until_forgotten_or_too_old(store):
    now = [0.0]
    cache = tokens.TokenCache(store, held_s=30.0, clock=lambda: now[0])
    _, token = tokens.add_hospital(store, "st-luke")
    assert cache.cached(token) is None  # never looked up
    assert cache.lookup(token).name == "st-luke" and cache.cached(token).name == "st-luke"
    assert cache.lookup("rtg_unknown") is None and cache.cached("rtg_unknown") is None  # unknown: not held
    tokens.revoke_hospital(store, "st-luke")  # behind the cache's back: still believed ...
    assert cache.cached(token).name == "st-luke"
    now[0] = 30.5  # ... until held_s has passed
    assert cache.cached(token) is None and cache.lookup(token) is None
    _, fresh = tokens.add_hospital(store, "st-luke")
    assert cache.lookup(fresh).name == "st-luke"
    tokens.revoke_hospital(store, "st-luke")
    cache.forget()  # what the admin service does after issuing or revoking: refused from the next call
    assert cache.cached(fresh) is None and cache.lookup(fresh) is None


def test_a_version_2_store_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE cases ("case_id", "label", "committed", "created_ms", PRIMARY KEY (case_id))')
        conn.execute("INSERT INTO cases VALUES ('case-1', 'old', 1, 5)")
        conn.execute('CREATE TABLE agents ("agent_id", "name", "hostname", "cpus", "ram_bytes", "gpus", '
                     '"engine_versions", "slots", "state", "last_heartbeat_ms", "ray_resource", PRIMARY KEY (agent_id))')
        conn.execute("""INSERT INTO agents VALUES ('agent-1', 'a', 'h', 1, 1, '[]', '{}', 1, 'alive', 5, 'r')""")
        conn.execute("PRAGMA user_version=2")
    store = SqliteStore(path)
    try:
        case = store.get_case("case-1")
        assert case.hospital == "" and case.label == "old"
        assert store.list_cases("st-luke") == [] and store.list_cases() == [case]
        assert store.get_agent("agent-1").identity == ""  # an agent from before: any agent certificate may resume it
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
