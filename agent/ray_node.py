"""Start this agent's Ray worker node in-process, the way Ray's own cluster utilities add nodes.

``ray start`` refuses to add a node when Ray is kept to loopback
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) and, with it enabled, rewrites a 127.0.0.1 cluster
address to the machine's network address. Starting the node through ``ray._private.node.Node``
(as ``ray.cluster_utils.Cluster.add_node`` does) uses exactly the addresses given.
"""

from __future__ import annotations

import os

import ray._private.node
import ray._private.parameter


def start_worker_node(
    gcs_address: str,
    node_ip: str,
    num_cpus: int,
    num_gpus: int,
    resources: dict[str, float],
    object_store_mb: int,
) -> ray._private.node.Node:
    """Join the cluster at ``gcs_address`` as a worker node advertising ``resources``.

    The node's processes stop when this process exits (Ray's reaper), or on :func:`stop_node`.
    """
    # Ray retries a task its memory monitor killed without end by default ("infinite oom retries"):
    # on a node short of memory a shard was killed and started again and again, and its job hung
    # (seen under load). Here it fails at once, and the master retries it on another agent within
    # its attempts, or fails the job saying why. The node's processes inherit the setting.
    os.environ.setdefault("RAY_task_oom_retries", "0")
    params = ray._private.parameter.RayParams(
        gcs_address=gcs_address,
        node_ip_address=node_ip,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=resources,
        object_store_memory=object_store_mb * 1024 * 1024,
        min_worker_port=0,
        max_worker_port=0,
        node_manager_port=0,
        include_log_monitor=False,
    )
    params.dashboard_agent_listen_port = None
    return ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)


def stop_node(node: ray._private.node.Node) -> None:
    node.kill_all_processes(check_alive=False, allow_graceful=True)
