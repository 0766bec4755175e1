"""``rtgrid gateway``: the hospital's DICOM node in front of the grid.

A PACS or planning system sends a series by C-STORE; once the series has been quiet for
``--quiet-s`` the gateway uploads it (de-identified with ``--pseudonymize``), submits the job the
first matching rule names (``--rules``, then ``--kind/--models/--order/--devices``), and when the
job ends pushes its DICOM results by C-STORE to every ``--send-to`` node (re-identified).

Prints one JSON line once listening (``ae_title``, ``host``, ``port``, ``spool``, ...), then one
JSON line per series that ends (``event``: done, failed or unmatched). The log goes to stderr.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

import typer

from .connect import DEFAULT_TARGET, _given
from .output import fail

EXIT_BAD_CONFIG = 2


def _emit(record: dict) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


def gateway_command(
    ae_title: str = typer.Option(..., "--ae-title", help="This node's AE title (at most 16 characters)."),
    port: int = typer.Option(11112, "--port", help="DICOM port to listen on (0: a free one, printed)."),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),
    kind: str = typer.Option("contour", "--kind", help="Job kind for series no rule of --rules matches: contour, "
                                                       "plan or full."),
    models: list[str] = typer.Option([], "--models", help="Deep segmentation models (NAME or NAME@VERSION; "
                                                          "repeatable or comma-separated)."),
    order: Path = typer.Option(None, "--order", help="Medical order (YAML or JSON) for plan/full jobs."),
    devices: str = typer.Option(None, "--devices", help="Device plans: ID,ID,... or auto / auto:N."),
    priority: int = typer.Option(0, "--priority", help="Job priority (higher runs first)."),
    rules: Path = typer.Option(None, "--rules", help="Rules file (YAML or JSON): calling AE, modality, series "
                                                     "description or body part -> job (format: README, the DICOM gateway)."),
    send_to: list[str] = typer.Option([], "--send-to", help="Push results to AE@HOST:PORT (repeatable)."),
    accept: list[str] = typer.Option([], "--accept", help="Calling AE titles accepted (repeatable; default any)."),
    spool: Path = typer.Option(Path("rtgrid-gateway-spool"), "--spool", help="Folder that keeps received series "
                                                                            "until the master has them."),
    quiet_s: float = typer.Option(10.0, "--quiet-s", help="A series is complete after this many seconds "
                                                          "without a new instance."),
    workers: int = typer.Option(4, "--workers", min=1, help="Series processed at once."),
    pseudonymize: bool = typer.Option(False, "--pseudonymize", help="De-identify before upload; re-identify "
                                                                    "results before pushing them."),
    shift_dates: bool = typer.Option(False, "--shift-dates", help="With --pseudonymize: move dates by a per-patient "
                                                                  "number of days instead of removing them."),
    pseudonym_map: Path = typer.Option(Path("rtgrid-pseudonyms.json"), "--pseudonym-map",
                                       envvar="RTGRID_PSEUDONYM_MAP", help="The hospital's pseudonym mapping."),
    target: str = typer.Option(None, "--target", envvar="RTGRID_TARGET", help="Master HOST:PORT."),
    ca: Path = typer.Option(None, "--ca", help="CA certificate of the master (PEM); default the global --ca."),
    token: str = typer.Option(None, "--token", help="The hospital's API token; default the global --token."),
) -> None:
    """Run the hospital's DICOM node: receive series by C-STORE, run them on the grid, push results back."""
    # pydicom and pynetdicom load only for this command, not for every `rtgrid` call.
    try:
        from ..gateway.dicomnet import Destination, StoreServer
        from ..gateway.rules import RulesError, load_rules, make_rule
    except ModuleNotFoundError as exc:  # the thin install leaves the gateway's packages out
        fail(f"`rtgrid gateway` needs the DICOM gateway's packages (no module {exc.name!r}): "
             "pip install 'rtgrid[gateway]'", EXIT_BAD_CONFIG)
    from ..gateway.service import SDK_ATTEMPTS, Gateway
    from ..gateway.spool import Spool
    from ..sdk import Client

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per association is noise here
    if not 0 < len(ae_title.strip()) <= 16:
        fail(f"--ae-title {ae_title!r}: 1 to 16 characters", EXIT_BAD_CONFIG)
    try:
        destinations = [Destination.parse(d) for d in send_to]
        chain = load_rules(rules) if rules is not None else []
        chain.append(make_rule(kind, models, order, devices or "", priority))
    except (ValueError, RulesError) as exc:
        fail(str(exc), EXIT_BAD_CONFIG)
    pseudonymizer = None
    if pseudonymize:
        from ..pseudonym import Pseudonymizer

        pseudonymizer = Pseudonymizer(pseudonym_map, shift_dates=shift_dates)
    store = Spool(spool, quiet_s)
    client = Client(target or DEFAULT_TARGET, attempts=SDK_ATTEMPTS, ca=ca or _given.ca, token=token or _given.token)
    gateway = Gateway(client, store, chain, destinations, ae_title.strip(), pseudonymizer, workers, report=_emit)
    try:
        server = StoreServer(ae_title.strip(), host, port, gateway.on_store, accept)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_BAD_CONFIG)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    _emit({"ae_title": ae_title.strip(), "host": server.host, "port": server.port, "spool": str(spool.resolve()),
           "target": client.target, "send_to": [str(d) for d in destinations], "accept": list(accept),
           "rules": len(chain), "pending": len(store.pending()) + store.incoming_count()})
    try:
        gateway.run(stop)
    finally:
        server.close()
        client.close()
