"""Warm segmentation models on an agent: packages fetched by hash, cached on disk, loaded once.

A package is fetched from the master's agent API (``FetchModel``) into
``<cache>/<sha256>/`` and is only renamed into place once complete; loading it verifies the
content hash again, so a damaged cache entry is detected, removed and fetched anew.

The model lives in a :class:`ModelActor`: a named Ray actor per agent and model
(``rtgrid-model-<agent>-<hash prefix>``) pinned to the agent's own node. It loads the network
once and serves every segmentation shard of every job that uses that model on this agent.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtgrid.engines.imaging.volume import Volume
from rtgrid.engines.segmentation.deep.package import CARD_FILE, HASH_FILE, WEIGHTS_FILE, ModelPackageError
from rtgrid.protos.grid_contract import ContourSegmentCall, SegmentResult, Task, shard_call_from
from rtgrid.protos.v1 import agent_pb2, agent_pb2_grpc

from .channel import MasterLink

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 600.0
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rtgrid" / "models"


def fetch_package(master: MasterLink, sha256: str, cache_dir: Path) -> Path:
    """The package folder of ``sha256`` in the cache, fetched from the master when absent.

    Raises
    ------
    ModelPackageError
        When the master's bytes are not the package announced (size or hash).
    grpc.RpcError
        When the master cannot be reached or does not know the package.
    """
    target = cache_dir / sha256
    if (target / HASH_FILE).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{sha256[:16]}-", dir=cache_dir))
    try:
        with master.channel() as channel:
            chunks = agent_pb2_grpc.AgentServiceStub(channel).FetchModel(
                agent_pb2.FetchModelRequest(sha256=sha256), timeout=FETCH_TIMEOUT_S
            )
            header = next(chunks)
            if header.sha256 != sha256:
                raise ModelPackageError(f"the master sent package {header.sha256!r} for {sha256}")
            with (partial / WEIGHTS_FILE).open("wb") as fh:
                received = fh.write(header.data)
                for chunk in chunks:
                    received += fh.write(chunk.data)
        if received != header.weights_bytes:
            raise ModelPackageError(f"package {sha256}: got {received} of {header.weights_bytes} weight bytes")
        (partial / CARD_FILE).write_bytes(header.card_json)
        (partial / HASH_FILE).write_text(sha256 + "\n")  # written last: marks the folder complete
        try:
            partial.rename(target)
        except OSError:  # another worker on this machine finished the same package first
            if not (target / HASH_FILE).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelActor:
    """One loaded model on one agent (created by the agent's shard worker, reused across jobs).

    Parameters
    ----------
    master : MasterLink
        The master's agent API and how to reach it (to fetch the package).
    sha256 : str
        Package content hash.
    cache_dir : str
        The agent's package cache.
    threads : int
        Torch CPU threads (the agent's CPUs; Ray would give an actor without CPUs only one).
    batch_slices : int
        Slices per forward pass (bounds memory).
    """

    def __init__(self, master: MasterLink, sha256: str, cache_dir: str, threads: int = 1, batch_slices: int = 8) -> None:
        import torch

        from rtgrid.engines.segmentation.deep.inference import SegmentationRunner

        torch.set_num_threads(max(1, threads))
        started = time.perf_counter()
        folder = Path(cache_dir) / sha256
        cached = (folder / HASH_FILE).is_file()
        try:
            folder = fetch_package(master, sha256, Path(cache_dir))
            self.runner = SegmentationRunner(folder, device=_device(), batch_slices=batch_slices)
        except ModelPackageError:
            if not cached:
                raise
            # A damaged cache entry (its hash no longer matches): fetch it again, once.
            log.warning("cached package %s is damaged; fetching it again", sha256)
            shutil.rmtree(folder, ignore_errors=True)
            cached = False
            folder = fetch_package(master, sha256, Path(cache_dir))
            self.runner = SegmentationRunner(folder, device=_device(), batch_slices=batch_slices)
        self.sha256 = sha256
        self.loads = 1  # an actor loads its model exactly once; the count proves reuse across jobs
        self.shards = 0
        self.from_cache = cached
        self.load_s = time.perf_counter() - started

    def stats(self) -> dict[str, Any]:
        """How this actor has been used: loads, shards served, where the package came from."""
        return {"sha256": self.sha256, "loads": self.loads, "shards": self.shards, "from_cache": self.from_cache,
                "load_s": self.load_s, "device": str(self.runner.device), "pid": os.getpid()}

    def run(self, task: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Run a shard task that needs this model (the shard worker's entry point)."""
        if task != Task.CONTOUR_SEGMENT:
            raise KeyError(f"a model actor runs only {Task.CONTOUR_SEGMENT.value!r}, not {task!r}")
        call = shard_call_from(task, kwargs)
        assert isinstance(call, ContourSegmentCall)
        return self.segment(call)

    def segment(self, call: ContourSegmentCall) -> dict[str, Any]:
        """Label a slab of axial slices (any axis-aligned orientation) with this model.

        Returns
        -------
        dict
            A :class:`SegmentResult`: the slab's uint8 labels and :meth:`stats` after this shard.
        """
        slab = Volume(np.asarray(call.hu), np.zeros(3), np.asarray(call.spacing_mm, float),
                      np.asarray(call.direction, float))
        labels = self.runner.predict_volume(slab).voxels
        self.shards += 1
        return SegmentResult(labels, self.stats()).to_result()
