"""Grid benchmark: upload throughput, submit latency, and sharded vs unsharded contouring.

``python -m bench.grid`` builds a real grid on 127.0.0.1 — a Ray head from Ray's cluster
utilities, one master process (``rtgrid up``) with a temporary data folder, and two agent
processes of one CPU each — and measures:

1. upload: a phantom CT of 300 slices of 512 x 512 (about 157 MB of DICOM; ``--upload-slices``)
   through ``Client.upload_folder`` to a master serving TLS with
   a hospital token (``upload``: the real path: TLS, checksums, store, per-file and series
   validation, the all-or-nothing commit), split into the file phase (the first file by
   StartUpload, UploadChunks and FinishUpload, the rest whole on ``--streams`` UploadFiles
   streams at once, each file checked as it is kept and its complete check started in the
   master's worker threads) and CommitCase (the checks waited for, series grouping and
   validation, volume store); the same upload to the plaintext master (``upload_plaintext``);
   and beside them, in the same run, the transport's ceiling: the same bytes in the same message
   sizes over one raw gRPC stream into a server that only counts them, with TLS and without
   (``raw_grpc``). ``--upload-only`` stops there (no agents, no jobs);
2. latency: submit → first WatchJob event, and submit → RUNNING, for ``--latency-jobs`` jobs on a
   small committed case (each cancelled once running), plus ``--tiny-jobs`` small jobs run to the
   end (the grid's fixed cost per job), after one warm-up job that starts both agents' shard
   worker processes (timed as ``warmup_job_s``);
3. contouring of the big CT: through the grid with each ``--shards`` count (submit → succeeded,
   the fastest of ``--repeats`` runs, with stage and shard times from the events and shard
   records), and the engine alone in this process (``contour_volume`` vs the slab functions one
   after the other plus the merge), so grid overhead and engine time can be told apart. The
   grid's result is checked against the engine's (same structure volumes).

The engine part runs before the grid starts so the two do not share the CPUs. The machine may be
shared: CPU times and load averages are reported beside wall times, and the engine's speedups and
the grid's overhead are given both from wall seconds and from CPU seconds (``*_cpu``), the latter
being what an idle machine would show. ``grid_equivalent_s`` is the work the agents must do for a
job (its slabs on two workers, then the merge executor with RTSTRUCT and overlays) timed here;
``grid_overhead_<n>_s`` is the grid's wall time above it.

Human-readable lines go to stderr; stdout carries exactly one JSON line with all figures (with
``"error"`` and the figures gathered so far when a step fails, and exit status 1).

Usage::

    python -m bench.grid
    python -m bench.grid --slices 40 --size 256 --latency-jobs 10 --tiny-jobs 2   # a quick smoke run
    python -m bench.grid --slices 300 --upload-only                                # upload vs raw gRPC
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TMPDIR", "/tmp/rtgrid-ray")

import grpc  # noqa: E402  (after the Ray environment above, which child processes inherit)

from rtgrid.client.local_grid import LocalGrid, Pki, make_pki  # noqa: E402
from rtgrid.client.sdk import UPLOAD_STREAMS, Client, state_name  # noqa: E402
from rtgrid.protos.grid_contract import RAY_NAMESPACE, ContourMergeCall, Task, agent_actor_name  # noqa: E402
from rtgrid.protos.v1 import common_pb2, hospital_pb2  # noqa: E402

NODE_IP = "127.0.0.1"
BIG_SPACING_MM = (0.98, 0.98, 2.0)
SMALL_SHAPE = (16, 64, 64)
SMALL_SPACING_MM = (7.8, 7.8, 8.0)  # a 50 cm field of view, like the big one
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
FIRST_EVENT_TIMEOUT_S = 30.0
RUNNING_TIMEOUT_S = 30.0
TINY_JOB_TIMEOUT_S = 120.0
TERMINAL = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)
# The raw gRPC sink: one stream-unary method on bytes, no servicer code, no store.
RAW_SERVICE, RAW_METHOD = "rtgrid.bench.Raw", "Send"
RAW_TIMEOUT_S = 600.0
# As the master's defaults (master.config): a chunk and the room for the other fields of its message.
RAW_CHUNK_BYTES = 1 << 20
RAW_MESSAGE_BYTES = 2 << 20


class BenchError(RuntimeError):
    """A step of the benchmark could not be measured (the message says which and why)."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q, method="higher"))


# --- the grid's processes -------------------------------------------------------------------


class BenchGrid(LocalGrid):
    """:class:`~rtgrid.client.local_grid.LocalGrid` with a Ray head in this process (Ray's cluster
    utilities: agents join as their own nodes) and every child's log in ``log_dir``.

    Child processes run in their own sessions (so a stuck one is killed with its Ray children);
    :meth:`close` stops everything that was started, in reverse order. ``pki`` makes it the secure
    deployment (TLS, hospital tokens), else plaintext on loopback.
    """

    def __init__(self, data_dir: Path, log_dir: Path, head_object_store_mb: int, pki: Pki | None = None) -> None:
        super().__init__(data_dir, pki=pki)
        self.log_dir = log_dir
        self.head_object_store_mb = head_object_store_mb
        self.cluster = None
        self._logs: list = []

    def start_ray(self) -> str:
        """Start the Ray head (no CPUs of its own) and join it as a driver; returns its address."""
        import ray
        from ray.cluster_utils import Cluster

        Path(os.environ["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
        # The master's ray.put of shard arguments lands in the head's object store: Ray's cluster
        # utilities give it 150 MiB unless told, so a merge of a 100 MB CT would spill to disk.
        self.cluster = Cluster(initialize_head=True, connect=False,
                               head_node_args={"num_cpus": 0, "node_ip_address": NODE_IP, "include_dashboard": False,
                                               "object_store_memory": self.head_object_store_mb * 1024 * 1024})
        # A driver, only to see when the agents' named actors exist.
        ray.init(address=self.cluster.address, namespace="rtgrid-bench", log_to_driver=False, logging_level="WARNING")
        self.ray_address = self.cluster.address
        self.actor_ready = _actor_ready
        return self.ray_address

    def _log(self, name: str):
        fh = (self.log_dir / f"{name}.log").open("w")
        self._logs.append(fh)
        return fh

    def start_master(self, port: str = "0", internal_port: str = "0", args=(), log_path: Path | None = None,
                     agents: int = 0) -> str:
        """The master on the Ray head of :meth:`start_ray`, its log in ``log_dir/master.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return super().start_master(port, internal_port, args, log_path or self.log_dir / "master.log", agents)

    def start_agent(self, name: str, cpus: int = 1, tries: int = 3, args=(), log=None,
                    timeout_s: float = START_TIMEOUT_S) -> subprocess.Popen:
        """An agent process, its log in ``log_dir/NAME.log``; returns once it is ready."""
        return super().start_agent(name, cpus, tries, args, log or self._log(name), timeout_s)

    def dump_log_tails(self, lines: int = 60) -> None:
        """Print the end of each child's log, the master's included, to stderr (the logs go with
        the temporary folder)."""
        for fh in self._logs:
            fh.flush()
        for path in sorted(self.log_dir.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            say(f"--- last lines of {path.name} ---")
            for line in tail:
                say(f"  {line}")

    def close(self) -> None:
        self.stop()  # SIGTERM drains: an agent deregisters and stops its Ray node
        if self.cluster is not None:
            import ray

            ray.shutdown()
            self.cluster.shutdown()
        for fh in self._logs:
            fh.close()


def _actor_ready(agent_id: str) -> bool:
    import ray

    try:
        ray.get_actor(agent_actor_name(agent_id), namespace=RAY_NAMESPACE)
        return True
    except ValueError:
        return False


# --- the SDK, timed ---------------------------------------------------------------------------


class TimedClient(Client):
    """The SDK client, adding up the wall time of each unary RPC by request type (over all the
    upload's streams, so the sums may exceed the wall time)."""

    def __init__(self, target: str, **kwargs) -> None:
        super().__init__(target, **kwargs)
        self.rpc_s: dict[str, float] = defaultdict(float)

    def call(self, method, request, timeout: float | None = None):
        started = time.perf_counter()
        try:
            return super().call(method, request, **({"timeout": timeout} if timeout else {}))
        finally:
            self.rpc_s[type(request).__name__] += time.perf_counter() - started


def _tree_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) of process ``pid`` and its live descendants, from ``/proc``;
    0 where unknown."""
    if pid is None or not Path(f"/proc/{pid}").exists():
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children[int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])].append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(children.get(current, []))
    return total


def measure_upload(target: str, ct_dir: Path, streams: int, master_pid: int | None = None,
                   **credentials) -> tuple[str, dict[str, float]]:
    """Upload ``ct_dir`` through ``Client.upload_folder`` (``credentials``: ``ca`` and ``token`` for
    a TLS master); returns the case id and the figures (``master_cpu_s``: of ``master_pid`` and its
    child processes, when given)."""
    n_bytes = sum(p.stat().st_size for p in ct_dir.iterdir() if p.is_file())
    n_files = sum(1 for p in ct_dir.iterdir() if p.is_file())
    load = _load()
    with TimedClient(target, **credentials) as client:
        client.wait_ready(START_TIMEOUT_S)
        started, cpu, master_cpu = time.perf_counter(), time.process_time(), _tree_cpu_s(master_pid)
        case = client.upload_folder(ct_dir, label="bench-big", streams=streams).case
        total_s = time.perf_counter() - started
        client_cpu_s = time.process_time() - cpu
        master_cpu_s = _tree_cpu_s(master_pid) - master_cpu
        rpc = dict(client.rpc_s)
    commit_s, create_s = rpc.get("CommitCaseRequest", 0.0), rpc.get("CreateCaseRequest", 0.0)
    files_s = total_s - commit_s - create_s
    mb = n_bytes / 1e6
    figures = {
        "files": n_files,
        "mb": round(mb, 2),
        "streams": streams,
        "tls": bool(credentials),
        "total_s": round(total_s, 3),
        "mb_per_s": round(mb / total_s, 2),
        # From the first StartUpload to the last FinishUpload (the client's reads and sha256 included).
        "files_s": round(files_s, 3),
        "files_mb_per_s": round(mb / files_s, 2),
        "start_upload_sum_s": round(rpc.get("StartUploadRequest", 0.0), 3),
        "finish_upload_sum_s": round(rpc.get("FinishUploadRequest", 0.0), 3),
        "commit_s": round(commit_s, 3),
        "per_file_ms": round(1000 * files_s / n_files, 2),
        "client_cpu_s": round(client_cpu_s, 3),
        "master_cpu_s": round(master_cpu_s, 3),
        "load_avg": load,
    }
    return case.case_id, figures


# --- raw gRPC: the transport's ceiling ------------------------------------------------------


def _raw_sink(cert: bytes, key: bytes, conn) -> None:
    """Serve ``RAW_SERVICE/RAW_METHOD`` on a free loopback port (TLS when ``cert`` is given): it
    counts the bytes streamed to it and answers the count. Sends the port on ``conn``, then
    serves until anything arrives on it."""
    from concurrent import futures

    def send(chunks, context) -> bytes:
        return sum(len(chunk) for chunk in chunks).to_bytes(8, "little")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", RAW_MESSAGE_BYTES)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        RAW_SERVICE, {RAW_METHOD: grpc.stream_unary_rpc_method_handler(send)})])
    address = f"{NODE_IP}:0"
    port = (server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)])) if cert
            else server.add_insecure_port(address))
    server.start()
    conn.send(port)
    conn.recv()
    server.stop(1)


def measure_raw_grpc(ct_dir: Path, ca: Path | None = None, cert: Path | None = None,
                     key: Path | None = None) -> dict[str, float]:
    """The files' bytes, read beforehand, in ``RAW_CHUNK_BYTES`` messages (the SDK's chunking) over
    one gRPC stream into a sink process: no checksums, store or validation. TLS when ``ca``,
    ``cert`` and ``key`` (the master's certificate) are given."""
    data = [p.read_bytes() for p in sorted(ct_dir.iterdir()) if p.is_file()]
    n_bytes = sum(len(d) for d in data)
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    sink = spawn.Process(target=_raw_sink, args=(cert.read_bytes() if cert else b"", key.read_bytes() if key else b"",
                                                 theirs), daemon=True)
    sink.start()
    try:
        if not ours.poll(START_TIMEOUT_S):
            raise BenchError(f"the raw gRPC sink did not start within {START_TIMEOUT_S:.0f} s")
        target = f"{NODE_IP}:{ours.recv()}"
        options = [("grpc.max_send_message_length", RAW_MESSAGE_BYTES)]
        channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials(ca.read_bytes()), options) if ca
                   else grpc.insecure_channel(target, options))
        with channel:
            grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT_S)
            send = channel.stream_unary(f"/{RAW_SERVICE}/{RAW_METHOD}")

            def chunks() -> Iterator[bytes]:
                for whole in data:
                    for offset in range(0, len(whole), RAW_CHUNK_BYTES):
                        yield whole[offset: offset + RAW_CHUNK_BYTES]

            started = time.perf_counter()
            received = int.from_bytes(send(chunks(), timeout=RAW_TIMEOUT_S), "little")
            seconds = time.perf_counter() - started
        if received != n_bytes:
            raise BenchError(f"the raw gRPC sink counted {received} bytes of {n_bytes}")
    finally:
        ours.send(None)
        sink.join(STOP_TIMEOUT_S)
        if sink.is_alive():
            sink.kill()
    return {"mb": round(n_bytes / 1e6, 2), "s": round(seconds, 3), "mb_per_s": round(n_bytes / 1e6 / seconds, 2)}


# --- jobs -----------------------------------------------------------------------------------


def watch_job(client: Client, job_id: str, timeout_s: float) -> list[tuple[float, common_pb2.JobEvent]]:
    """All events of a job until it ends, each with the local ``perf_counter`` of its arrival.

    Raises
    ------
    BenchError
        When the job has not ended within ``timeout_s`` (it is then cancelled).
    """
    stream = client.hospital.WatchJob(hospital_pb2.WatchJobRequest(job_id=job_id), timeout=timeout_s)
    events = []
    try:
        for event in stream:
            events.append((time.perf_counter(), event))
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        client.cancel(job_id)
        raise BenchError(f"job {job_id} did not end within {timeout_s:.0f} s; cancelled it") from exc
    if not events or events[-1][1].state not in TERMINAL:
        raise BenchError(f"the event stream of job {job_id} ended before the job did")
    return events


def measure_submit_latency(client: Client, case_id: str, n_jobs: int) -> dict[str, float]:
    """Submit → first event and submit → RUNNING for ``n_jobs`` jobs, one after the other.

    Each job is cancelled once it runs (or after ``RUNNING_TIMEOUT_S``), so the next one finds
    the agents free.
    """
    first_ms: list[float] = []
    running_ms: list[float] = []
    for i in range(n_jobs):
        started = time.perf_counter()
        job = client.submit(case_id, "contour", params={"shards": "1"})
        stream = client.hospital.WatchJob(hospital_pb2.WatchJobRequest(job_id=job.job_id),
                                          timeout=FIRST_EVENT_TIMEOUT_S + RUNNING_TIMEOUT_S)
        try:
            for n, event in enumerate(stream):
                if n == 0:
                    first_ms.append(1000 * (time.perf_counter() - started))
                if event.state == common_pb2.JOB_STATE_RUNNING:
                    running_ms.append(1000 * (time.perf_counter() - started))
                    break
                if event.state in TERMINAL:
                    break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            if len(first_ms) <= i:
                raise BenchError(f"job {job.job_id}: no event within {FIRST_EVENT_TIMEOUT_S:.0f} s") from exc
        finally:
            stream.cancel()
        client.cancel(job.job_id)
    if len(running_ms) < n_jobs:
        say(f"  only {len(running_ms)} of {n_jobs} latency jobs reached RUNNING before they were cancelled")
    figures = {
        "jobs": n_jobs,
        "first_event_p50_ms": round(_percentile(first_ms, 50), 2),
        "first_event_p99_ms": round(_percentile(first_ms, 99), 2),
        "first_event_max_ms": round(max(first_ms), 2),
    }
    if running_ms:
        figures |= {
            "running_jobs": len(running_ms),
            "running_p50_ms": round(_percentile(running_ms, 50), 2),
            "running_p99_ms": round(_percentile(running_ms, 99), 2),
        }
    return figures


def job_timings(client: Client, case_id: str, params: dict[str, str], timeout_s: float) -> dict:
    """Run one job to its end; wall time, stage times from the events, shard times from the store."""
    started = time.perf_counter()
    job = client.submit(case_id, "contour", params=params)
    events = watch_job(client, job.job_id, timeout_s)
    wall_s = events[-1][0] - started
    final = events[-1][1]
    if final.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise BenchError(f"job {job.job_id} ({params}) ended {state_name(final.state)}: {final.message}")
    by_kind = {}
    for _, e in events:
        if e.type == common_pb2.EVENT_TYPE_STATE:
            by_kind.setdefault(state_name(e.state), e.time_ms)
        elif e.type == common_pb2.EVENT_TYPE_PROGRESS and e.shards_done == 0:
            by_kind.setdefault(f"stage:{e.stage}", e.time_ms)
    shards = client.shards(job.job_id)
    out: dict = {
        "job_id": job.job_id,
        "wall_s": round(wall_s, 3),
        "queued_to_running_s": round((by_kind["running"] - by_kind["queued"]) / 1000, 3),
        "merge_s": round((by_kind["succeeded"] - by_kind["stage:merge"]) / 1000, 3),
        "contour_stage_s": round((by_kind["stage:merge"] - by_kind["running"]) / 1000, 3),
        "events": len(events),
    }
    for stage in ("contour", "merge"):
        durations = [(s.finished_ms - s.started_ms) / 1000 for s in shards if s.stage == stage]
        out[f"{stage}_shards"] = len(durations)
        out[f"{stage}_shard_s_sum"] = round(sum(durations), 3)
        out[f"{stage}_shard_s_max"] = round(max(durations), 3)
    out["agents_used"] = len({s.agent_id for s in shards if s.stage == "contour"})
    return out


def measure_tiny_jobs(client: Client, case_id: str, n_jobs: int) -> dict[str, float]:
    """The grid's fixed cost: submit → succeeded for small jobs (one slab, then the merge)."""
    walls = [job_timings(client, case_id, {"shards": "1"}, TINY_JOB_TIMEOUT_S)["wall_s"] for _ in range(n_jobs)]
    return {"jobs": n_jobs, "wall_p50_s": round(_percentile(walls, 50), 3), "wall_max_s": round(max(walls), 3)}


def fetch_summary(client: Client, job_id: str, out_dir: Path) -> tuple[dict, dict[str, float]]:
    """Download the job's artifacts; returns its contours.json and the download figures."""
    artifacts = client.artifacts(job_id)
    started = time.perf_counter()
    paths = {a.name: client.download(a, out_dir) for a in artifacts}
    download_s = time.perf_counter() - started
    mb = sum(a.size_bytes for a in artifacts) / 1e6
    summary = json.loads(paths["contours.json"].read_text())
    return summary, {"mb": round(mb, 3), "s": round(download_s, 3), "mb_per_s": round(mb / download_s, 2)}


# --- the engine alone -----------------------------------------------------------------------


@contextmanager
def _timed(into: dict, name: str) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    into[f"{name}_s"] = round(time.perf_counter() - wall, 3)
    into[f"{name}_cpu_s"] = round(time.process_time() - cpu, 3)


def _two_worker_makespan(durations: list[float]) -> float:
    """Longest-first greedy schedule of independent tasks on two workers (what two agents can do)."""
    workers = [0.0, 0.0]
    for d in sorted(durations, reverse=True):
        workers[workers.index(min(workers))] += d
    return max(workers)


def measure_engine(ct_dir: Path, shard_counts: list[int]) -> tuple[dict, dict[str, float]]:
    """Contour the CT in this process, whole and as slabs; returns the figures and the volumes (cc).

    Besides the engine's own functions it times the agents' merge executor once (merge, RTSTRUCT,
    overlays, summary), so the grid's merge stage can be compared with the same work done here.
    """
    from rtgrid.agent.executors import EXECUTORS
    from rtgrid.engines.imaging.intake import load_series_dir
    from rtgrid.engines.segmentation import classical

    figures: dict = {}
    with _timed(figures, "load_series"):
        series = load_series_dir(ct_dir)
    volume = series.volume
    with _timed(figures, "contour_volume"):
        masks = classical.contour_volume(volume)
    voxel_cc = volume.voxel_volume_mm3 / 1000.0
    volumes_cc = {name: round(float(mask.sum()) * voxel_cc, 3) for name, mask in masks.items()}
    del masks
    for n in sorted(set(shard_counts)):
        part: dict = {}
        slab_s, slab_cpu_s = [], []
        results = []
        with _timed(part, "slabs"):
            for slab in classical.plan_slabs(volume.shape[0], n):
                wall, cpu = time.perf_counter(), time.process_time()
                results.append(classical.contour_slab(volume.voxels[slab.halo_start : slab.halo_stop],
                                                      volume.spacing_mm, volume.direction, slab))
                slab_s.append(time.perf_counter() - wall)
                slab_cpu_s.append(time.process_time() - cpu)
        with _timed(part, "merge"):
            merged = classical.merge_slabs(results, volume)
        part["same_volumes_as_unsharded"] = all(
            round(float(merged[k].sum()) * voxel_cc, 3) == v for k, v in volumes_cc.items()
        )
        del merged
        if "executor_merge_s" not in figures:
            slab_results = [{"slab": dataclasses.asdict(r.slab), "bits": r.bits} for r in results]
            with _timed(figures, "executor_merge"):
                EXECUTORS[Task.CONTOUR_MERGE](ContourMergeCall(slab_results=slab_results, series=series))
        part["sequential_s"] = round(part["slabs_s"] + part["merge_s"], 3)
        part["slab_s_max"] = round(max(slab_s), 3)
        part["slabs_two_workers_s"] = round(_two_worker_makespan(slab_s), 3)
        part["ideal_two_workers_s"] = round(part["slabs_two_workers_s"] + part["merge_s"], 3)
        part["speedup_sequential"] = round(figures["contour_volume_s"] / part["sequential_s"], 3)
        part["speedup_ideal_two_workers"] = round(figures["contour_volume_s"] / part["ideal_two_workers_s"], 3)
        # The same from CPU seconds: what an idle 2-core box would take, free of other people's load.
        part["slabs_two_workers_cpu_s"] = round(_two_worker_makespan(slab_cpu_s), 3)
        part["ideal_two_workers_cpu_s"] = round(part["slabs_two_workers_cpu_s"] + part["merge_cpu_s"], 3)
        part["speedup_ideal_two_workers_cpu"] = round(
            figures["contour_volume_cpu_s"] / part["ideal_two_workers_cpu_s"], 3)
        figures[f"shards_{n}"] = part
        del results
    for n in sorted(set(shard_counts)):
        # The least the grid's agents must compute: slabs on two workers, then the merge executor.
        part = figures[f"shards_{n}"]
        part["grid_equivalent_s"] = round(part["slabs_two_workers_s"] + figures["executor_merge_s"], 3)
        part["grid_equivalent_cpu_s"] = round(part["slabs_two_workers_cpu_s"] + figures["executor_merge_cpu_s"], 3)
    return figures, volumes_cc


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace, figures: dict) -> None:
    from rtgrid.engines.phantom import write_phantom_case

    big_shape = (args.slices, args.size, args.size)
    spacing = (BIG_SPACING_MM[0] * 512 / args.size, BIG_SPACING_MM[1] * 512 / args.size, BIG_SPACING_MM[2])
    shard_counts = [int(s) for s in args.shards.split(",")]
    figures["config"] = {"big_shape": list(big_shape), "upload_shape": [args.upload_slices, args.size, args.size], "big_spacing_mm": [round(s, 4) for s in spacing],
                         "small_shape": list(SMALL_SHAPE), "shards": shard_counts, "agents": 2, "agent_cpus": 1,
                         "head_object_store_mb": args.head_object_store_mb, "cpu_count": os.cpu_count()}
    figures["load_avg_start"] = _load()
    with tempfile.TemporaryDirectory(prefix="rtgrid-bench-grid-") as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        big = write_phantom_case(tmp / "big", shape=big_shape, spacing_mm=spacing, seed=7)
        small = write_phantom_case(tmp / "small", shape=SMALL_SHAPE, spacing_mm=SMALL_SPACING_MM, seed=7)
        upload_ct = big.ct_dir
        if args.upload_slices != args.slices:
            upload_ct = write_phantom_case(tmp / "upload", shape=(args.upload_slices, args.size, args.size),
                                           spacing_mm=spacing, seed=7).ct_dir
        figures["phantom_write_s"] = round(time.perf_counter() - started, 3)
        say(f"phantoms written in {figures['phantom_write_s']:.1f} s: {big_shape} and {SMALL_SHAPE}")

        if not args.upload_only:
            say("engine alone, in this process ...")
            engine, engine_cc = measure_engine(big.ct_dir, shard_counts)
            figures["engine"] = engine
            say(f"  load {engine['load_series_s']:.2f} s; contour_volume {engine['contour_volume_s']:.2f} s "
                f"(cpu {engine['contour_volume_cpu_s']:.2f} s)")
            say(f"  agents' merge executor (merge + RTSTRUCT + overlays): {engine['executor_merge_s']:.2f} s "
                f"(cpu {engine['executor_merge_cpu_s']:.2f} s)")
            for key, part in engine.items():
                if key.startswith("shards_"):
                    say(f"  {key}: slabs {part['slabs_s']:.2f} s + merge {part['merge_s']:.2f} s = "
                        f"{part['sequential_s']:.2f} s sequential, {part['ideal_two_workers_s']:.2f} s ideal on two "
                        f"workers (speedup {part['speedup_ideal_two_workers']:.2f}x; from cpu seconds "
                        f"{part['speedup_ideal_two_workers_cpu']:.2f}x); identical: "
                        f"{part['same_volumes_as_unsharded']}")

        for folder in ("data", "logs", "tls-data", "tls-logs"):
            (tmp / folder).mkdir()
        grid = BenchGrid(tmp / "data", tmp / "logs", args.head_object_store_mb)
        with grid_session(grid):
            ray_address = grid.start_ray()
            measure_uploads(args, figures, upload_ct, tmp, ray_address)
            started = time.perf_counter()
            target = grid.start_master()
            master_start_s = time.perf_counter() - started
            say("upload to the plaintext master ...")
            big_case, figures["upload_plaintext"] = measure_upload(target, upload_ct, args.streams, grid.master.pid)
            up = figures["upload_plaintext"]
            say(f"  {up['mb']:.1f} MB in {up['total_s']:.2f} s = {up['mb_per_s']:.1f} MB/s (commit {up['commit_s']:.2f} s)")
            if args.upload_only:
                figures["load_avg_end"] = _load()
                return
            if upload_ct != big.ct_dir:
                with Client(target) as client:
                    big_case = client.upload_folder(big.ct_dir, label="bench-big").case.case_id
            started = time.perf_counter() - master_start_s
            for name in ("bench-a", "bench-b"):
                # One after the other: two raylets starting at once on 2 busy cores can miss Ray's start limit.
                grid.start_agent(name, cpus=1)
            figures["grid_start_s"] = round(time.perf_counter() - started, 3)
            say(f"grid up in {figures['grid_start_s']:.1f} s: master {target}, Ray {ray_address}, two 1-CPU agents")

            with Client(target) as client:
                small_case = client.upload_folder(small.ct_dir, label="bench-small").case.case_id
                # Both agents start their shard worker process (imports included) here, not in a timed job.
                figures["warmup_job_s"] = job_timings(client, small_case, {"shards": "2"}, TINY_JOB_TIMEOUT_S)["wall_s"]
                say(f"warm-up job (first shards on both agents): {figures['warmup_job_s']:.2f} s")
                say(f"submit latency over {args.latency_jobs} jobs ...")
                lat = figures["latency"] = measure_submit_latency(client, small_case, args.latency_jobs)
                say(f"  submit → first event p50 {lat['first_event_p50_ms']:.1f} ms, "
                    f"p99 {lat['first_event_p99_ms']:.1f} ms; submit → running p50 "
                    f"{lat.get('running_p50_ms', float('nan')):.1f} ms")
                if args.tiny_jobs:
                    tiny = figures["tiny_jobs"] = measure_tiny_jobs(client, small_case, args.tiny_jobs)
                    say(f"  {SMALL_SHAPE} job submit → succeeded: p50 {tiny['wall_p50_s']:.2f} s, "
                        f"max {tiny['wall_max_s']:.2f} s")

                grid_figures: dict = {}
                for n in shard_counts:
                    say(f"contour job on the grid, shards={n}, {args.repeats} run(s) ...")
                    runs = [job_timings(client, big_case, {"shards": str(n)}, args.job_timeout)
                            for _ in range(args.repeats)]
                    result = min(runs, key=lambda r: r["wall_s"])  # the least disturbed by other load
                    result["wall_s_runs"] = [r["wall_s"] for r in runs]
                    summary, result["download"] = fetch_summary(client, result["job_id"], tmp / f"out-{n}")
                    grid_cc = {k: v["volume_cc"] for k, v in summary["structures"].items()}
                    result["same_volumes_as_engine"] = grid_cc == engine_cc
                    grid_figures[f"shards_{n}"] = result
                    part = engine[f"shards_{n}"]
                    say(f"  best {result['wall_s']:.2f} s of {result['wall_s_runs']} (contour stage {result['contour_stage_s']:.2f} s over "
                        f"{result['contour_shards']} shards on {result['agents_used']} agents, merge "
                        f"{result['merge_s']:.2f} s; the same work here: {part['grid_equivalent_s']:.2f} s, "
                        f"{part['grid_equivalent_cpu_s']:.2f} cpu s); matches engine: "
                        f"{result['same_volumes_as_engine']}")
                figures["grid"] = grid_figures
                figures["ratios"] = _ratios(engine, grid_figures, shard_counts)
                say(f"ratios: {json.dumps(figures['ratios'])}")
    figures["load_avg_end"] = _load()


def measure_uploads(args: argparse.Namespace, figures: dict, ct_dir: Path, tmp: Path, ray_address: str) -> None:
    """``upload`` through a TLS master (``rtgrid up`` with ``rtgrid certs``, a hospital token; no
    agents, so the upload has the CPUs to itself) and ``raw_grpc`` with the same certificate,
    into ``figures``; the TLS master is stopped before returning."""
    from bench.secure_grid import SecureLocalGrid  # imports this module: not at the top

    secure = SecureLocalGrid(tmp / "tls-data", tmp / "tls-logs", args.head_object_store_mb, make_pki(tmp / "pki"))
    secure.ray_address = ray_address  # beside the plaintext grid, on its Ray head
    try:
        say("raw gRPC (the same bytes and message sizes, nothing done with them) ...")
        pki = secure.pki
        figures["raw_grpc"] = raw = {"tls": measure_raw_grpc(ct_dir, pki.ca, pki.server_cert, pki.server_key),
                                     "plaintext": measure_raw_grpc(ct_dir)}
        say(f"  TLS {raw['tls']['mb_per_s']:.1f} MB/s, plaintext {raw['plaintext']['mb_per_s']:.1f} MB/s")
        secure.start_master()
        secure.add_hospitals(["bench"])
        say(f"upload through the real path (TLS, token, {args.streams} streams) ...")
        _, figures["upload"] = measure_upload(secure.target, ct_dir, args.streams, secure.master.pid, ca=pki.ca,
                                              token=secure.tokens["bench"])
    except BaseException:
        secure.dump_log_tails()
        raise
    finally:
        secure.close()
    up = figures["upload"]
    up["vs_raw_grpc_tls"] = round(up["mb_per_s"] / figures["raw_grpc"]["tls"]["mb_per_s"], 3)
    say(f"  {up['files']} files, {up['mb']:.1f} MB in {up['total_s']:.2f} s = {up['mb_per_s']:.1f} MB/s "
        f"({up['vs_raw_grpc_tls']:.0%} of raw gRPC over TLS; files {up['files_s']:.2f} s = "
        f"{up['files_mb_per_s']:.1f} MB/s, commit {up['commit_s']:.2f} s; cpu: client {up['client_cpu_s']:.2f} s, "
        f"master {up['master_cpu_s']:.2f} s; load average {up['load_avg']})")


def with_jobs_cancelled(grid: BenchGrid) -> None:
    """Cancel anything still queued or running, so the agents drain at once."""
    if not grid.target or grid.master is None or grid.master.poll() is not None:
        return
    try:
        with Client(grid.target, attempts=1) as client:
            for job in client.jobs():
                if job.state not in TERMINAL:
                    client.cancel(job.job_id)
    except grpc.RpcError as exc:
        say(f"  could not cancel leftover jobs: {exc.code()}")


@contextmanager
def grid_session(grid: BenchGrid) -> Iterator[BenchGrid]:
    """Around a benchmark's use of ``grid``: on failure print the children's log tails; always
    cancel what is left and stop the grid."""
    try:
        yield grid
    except BaseException:
        grid.dump_log_tails()
        raise
    finally:
        say("stopping the grid ...")
        with_jobs_cancelled(grid)
        grid.close()


def _ratios(engine: dict, grid: dict, shard_counts: list[int]) -> dict[str, float]:
    """Speedups (unsharded time / sharded time) and grid overhead (grid wall − the same work done here)."""
    ratios: dict[str, float] = {}
    one = grid.get("shards_1")
    for n in shard_counts:
        part, g = engine[f"shards_{n}"], grid[f"shards_{n}"]
        ratios[f"grid_overhead_{n}_s"] = round(g["wall_s"] - part["grid_equivalent_s"], 3)
        ratios[f"grid_overhead_{n}_vs_cpu_s"] = round(g["wall_s"] - part["grid_equivalent_cpu_s"], 3)
        if n == 1:
            continue
        if one:
            ratios[f"grid_speedup_{n}_vs_1"] = round(one["wall_s"] / g["wall_s"], 3)
            ratios[f"grid_contour_stage_speedup_{n}_vs_1"] = round(
                one["contour_stage_s"] / g["contour_stage_s"], 3)
        ratios[f"engine_speedup_{n}_sequential_vs_unsharded"] = part["speedup_sequential"]
        ratios[f"engine_speedup_{n}_ideal_two_workers_vs_unsharded"] = part["speedup_ideal_two_workers"]
        ratios[f"engine_speedup_{n}_ideal_two_workers_vs_unsharded_cpu"] = part["speedup_ideal_two_workers_cpu"]
    return ratios


@contextmanager
def _stdout_for_json_only() -> Iterator[int]:
    """Send everything written to fd 1 (Ray, child processes, stray prints) to stderr; yield the real stdout."""
    sys.stdout.flush()
    real = os.dup(1)
    os.dup2(2, 1)
    try:
        yield real
    finally:
        sys.stdout.flush()
        os.dup2(real, 1)
        os.close(real)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200, help="slices of the big phantom CT")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of the big phantom CT")
    parser.add_argument("--shards", default="1,2,8", help="comma-separated shard counts for the big contour job")
    parser.add_argument("--latency-jobs", type=int, default=50, help="jobs timed for submit → first event")
    parser.add_argument("--tiny-jobs", type=int, default=3, help="small jobs run to the end")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each big contour job; the fastest is reported, all walls are listed")
    parser.add_argument("--head-object-store-mb", type=int, default=1024,
                        help="object store of the Ray head, where the master puts shard arguments (MiB)")
    parser.add_argument("--job-timeout", type=float, default=240.0, help="seconds allowed per big contour job")
    parser.add_argument("--upload-slices", type=int, default=300,
                        help="slices of the uploaded phantom CT (of --size; the big CT itself when equal to --slices)")
    parser.add_argument("--streams", type=int, default=UPLOAD_STREAMS, help="files the upload sends at once")
    parser.add_argument("--upload-only", action="store_true",
                        help="measure the uploads and raw gRPC only (no engine part, agents or jobs)")
    return run_benchmark("grid", run, parser.parse_args(argv))


def run_benchmark(name: str, run, args: argparse.Namespace) -> int:
    """Run ``run(args, figures)`` and end with one JSON line of ``figures`` on stdout, also on error.

    SIGTERM unwinds like Ctrl-C, so a grid the run started is still stopped. Returns the exit status.
    """
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    figures: dict = {"benchmark": name}
    status = 0
    started = time.perf_counter()
    with _stdout_for_json_only() as stdout_fd:
        try:
            run(args, figures)
        except (Exception, KeyboardInterrupt, SystemExit) as exc:
            status = 1
            detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) else str(exc)
            figures["error"] = f"{type(exc).__name__}: {detail}"
            say(f"FAILED: {figures['error']}")
        figures["total_s"] = round(time.perf_counter() - started, 3)
        say(f"total {figures['total_s']:.1f} s")
        os.write(stdout_fd, (json.dumps(figures) + "\n").encode())
    return status


if __name__ == "__main__":
    sys.exit(main())
