"""DICOM networking of the gateway (pynetdicom): the C-ECHO / C-STORE service class provider that
receives series, and the C-STORE user that pushes results to a planning system or a PACS."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from .rules import SeriesInfo

log = logging.getLogger("rtgrid.gateway")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
ASSOCIATION_TIMEOUT_S = 30.0
_DESTINATION = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


class PushError(RuntimeError):
    """A destination refused the association or an instance; the message says which and why."""


@dataclass(frozen=True)
class Destination:
    """A DICOM node results are pushed to (``AE@HOST:PORT``)."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        """``TPS@10.0.0.5:104`` → Destination.

        Raises
        ------
        ValueError
            Text not of the form AE@HOST:PORT (AE title at most 16 characters, port 1..65535).
        """
        m = _DESTINATION.match(text.strip())
        if not m or not 0 < int(m["port"]) < 65536:
            raise ValueError(f"{text!r} is not AE@HOST:PORT (AE title of at most 16 characters)")
        return cls(m["ae"], m["host"], int(m["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


StoreCallback = Callable[[bytes, pydicom.Dataset, str], None]
"""Called for each received instance: Part 10 bytes, the dataset (lazily decoded), the calling AE."""


def series_info(ds: pydicom.Dataset, calling_ae: str) -> SeriesInfo:
    """What the rules look at, from one instance."""
    return SeriesInfo(calling_ae, str(ds.get("Modality", "") or ""), str(ds.get("SeriesDescription", "") or ""),
                      str(ds.get("BodyPartExamined", "") or ""))


class StoreServer:
    """A C-ECHO and C-STORE SCP.

    Parameters
    ----------
    ae_title : str
        This node's AE title (callers must address it by this title).
    host, port : str, int
        Where to listen; port 0 picks a free one (see :attr:`port`).
    on_store : StoreCallback
        Keeps an instance; an exception makes the C-STORE fail with "out of resources" (the sender
        keeps it and may retry).
    accepted_calling_aes : list[str]
        Calling AE titles accepted; empty: any.
    """

    def __init__(self, ae_title: str, host: str, port: int, on_store: StoreCallback,
                 accepted_calling_aes: list[str] | tuple[str, ...] = ()) -> None:
        self.ae = AE(ae_title=ae_title)
        self.ae.require_called_aet = True
        if accepted_calling_aes:
            self.ae.require_calling_aet = list(accepted_calling_aes)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self._on_store = on_store
        handlers = [(evt.EVT_C_STORE, self._handle_store), (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS)]
        self.server = self.ae.start_server((host, port), block=False, evt_handlers=handlers)
        self.host, self.port = self.server.server_address[:2]

    def _handle_store(self, event) -> int:
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            encoded = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # a malformed dataset: refuse it, keep serving
            log.warning("C-STORE from %s: cannot decode the dataset: %s", calling, exc)
            return STATUS_CANNOT_UNDERSTAND
        try:
            self._on_store(encoded, ds, calling)
        except ValueError as exc:
            log.warning("C-STORE from %s refused: %s", calling, exc)
            return STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            log.error("C-STORE from %s: cannot keep the instance: %s", calling, exc)
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS

    def close(self) -> None:
        self.server.shutdown()


def push(paths: list[Path], destination: Destination, calling_ae: str) -> int:
    """Send DICOM files to ``destination`` by C-STORE over one association; returns how many.

    Raises
    ------
    PushError
        The association is refused or aborted, or an instance is not stored (status not success).
    """
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ASSOCIATION_TIMEOUT_S
    contexts: dict[str, list[str]] = {}
    for ds in datasets:
        syntaxes = contexts.setdefault(str(ds.SOPClassUID), [])
        for ts in (str(ds.file_meta.TransferSyntaxUID), ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if ts not in syntaxes:
                syntaxes.append(ts)
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise PushError(f"{destination}: association {'rejected' if assoc.is_rejected else 'failed'}")
    try:
        for path, ds in zip(paths, datasets):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None or not (code == STATUS_SUCCESS or 0xB000 <= code <= 0xBFFF):  # Bxxx: stored, warned
                raise PushError(f"{destination}: {path.name} not stored (status "
                                f"{'none: the association dropped' if code is None else hex(code)})")
    finally:
        if assoc.is_established:
            assoc.release()
    return len(paths)
