"""The contract between the master and its agents on Ray, written once for both sides.

The gRPC contract with hospitals and operators lives in ``rtgrid/v1/*.proto``. The master and the
agents also meet on Ray: the master looks up each agent's named actor and asks it to run shard
tasks by name, and the agents hand back results that may publish files. Both sides import the
names and conventions of that meeting from here, so that they cannot drift apart (the master never
imports agent code, nor the agent master code).

Shard results
-------------
A shard result is a dict of arrays, bytes and JSON values. Files for the job's user are listed
under ``"artifacts"`` (``{"name", "kind", "modality"}``), their bytes under ``file_key(name)``
(:func:`publishing` builds such a result). The master stores each file once, by content hash:
before it stores the result it takes the bytes out and writes each file's ``sha256`` and
``size`` into its entry under ``"artifacts"`` (:func:`detach_files`); job kinds read a file of an
earlier stage from the blob store by that hash (:func:`stored_file_sha256`).

Shared inputs
-------------
An argument several shards take (a plan's setup: density grid and masks, for every beam's shard,
the optimization and every device's conversion) is given as a :class:`SharedInput`: the master
puts its value into Ray's object store once and every call refers to it; the executor receives
the value itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

RAY_NAMESPACE = "rtgrid"
"""The Ray namespace of every named rtgrid actor."""

FILE_PREFIX = "file:"


class Task(StrEnum):
    """Shard tasks an agent runs; the value is the name that travels to the agent."""

    CONTOUR_SLAB = "contour.slab"
    CONTOUR_SEGMENT = "contour.segment"  # on a segmentation model's warm actor
    CONTOUR_MERGE = "contour.merge"
    PLAN_SETUP = "plan.setup"
    PLAN_BEAM_DIJ = "plan.beam_dij"
    PLAN_OPTIMIZE = "plan.optimize"
    PLAN_CONVERT_DEVICE = "plan.convert_device"
    PREDICT_DOSE = "predict.dose"


@dataclass(frozen=True)
class SharedInput:
    """A shard argument that many shards take, loaded and put into Ray's object store once.

    Attributes
    ----------
    key : str
        Names the value for as long as it lives (a content hash serves best).
    load : callable
        Returns the value; called only when the master does not hold it under ``key`` already.
    """

    key: str
    load: Callable[[], Any]


def agent_actor_name(agent_id: str) -> str:
    """The name of an agent's shard-worker actor (detached, in :data:`RAY_NAMESPACE`)."""
    return f"rtgrid-agent-{agent_id}"


def model_actor_name(agent_id: str, sha256: str) -> str:
    """The name of the warm actor that serves model ``sha256`` (a package hash) on an agent."""
    return f"rtgrid-model-{agent_id}-{sha256[:16]}"


@dataclass(frozen=True)
class Artifact:
    """A file a shard publishes to the job's user.

    Attributes
    ----------
    name : str
        File name the user downloads (``RD.standard.dcm``).
    kind : str
        What it is for the grid (``rtdose``, ``rtplan``, ``report``, ``image`` ...).
    modality : str
        DICOM modality, ``""`` for other files.
    data : bytes
    """

    name: str
    kind: str
    modality: str
    data: bytes


def file_key(name: str) -> str:
    """The result key of a published file's bytes."""
    return FILE_PREFIX + name


def publishing(*artifacts: Artifact) -> dict[str, Any]:
    """A shard result that publishes ``artifacts`` (more keys may be added to it)."""
    result: dict[str, Any] = {"artifacts": [{"name": a.name, "kind": a.kind, "modality": a.modality} for a in artifacts]}
    result.update({file_key(a.name): a.data for a in artifacts})
    return result


def published(result: Mapping[str, Any]) -> list[Artifact]:
    """The files a shard result (as the agent returned it) publishes, in its order.

    Raises
    ------
    KeyError
        A listed file without its bytes.
    """
    return [Artifact(spec["name"], spec["kind"], spec.get("modality", ""), result[file_key(spec["name"])])
            for spec in result.get("artifacts", [])]


def detach_files(result: Mapping[str, Any], store: Callable[[bytes], str]) -> dict[str, Any]:
    """The result to keep: each published file stored with ``store`` (bytes -> sha256), its bytes
    taken out and its ``sha256`` and ``size`` (bytes) added to its entry under ``"artifacts"``."""
    kept = {k: v for k, v in result.items() if not k.startswith(FILE_PREFIX) and k != "artifacts"}
    kept["artifacts"] = [{"name": a.name, "kind": a.kind, "modality": a.modality, "sha256": store(a.data),
                          "size": len(a.data)} for a in published(result)]
    return kept


def stored_file_sha256(result: Mapping[str, Any], name: str) -> str:
    """The sha256 of a file a stored result (:func:`detach_files`) published.

    Raises
    ------
    KeyError
        The result published no file ``name``.
    """
    for spec in result.get("artifacts", []):
        if spec["name"] == name and "sha256" in spec:
            return spec["sha256"]
    raise KeyError(f"the shard result published no file {name!r}; it has {[s['name'] for s in result.get('artifacts', [])]}")
