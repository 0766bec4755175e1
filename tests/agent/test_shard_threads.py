"""An agent shares its CPUs out among the shards it runs at once instead of giving each all of them."""

from __future__ import annotations

from rtgrid.agent.worker import shard_threads


def test_a_lone_shard_gets_every_cpu_and_concurrent_ones_share_them():
    assert shard_threads(16, 1) == 16
    assert shard_threads(16, 2) == 8
    assert shard_threads(16, 3) == 5
    assert shard_threads(2, 5) == 1  # never fewer than one
    assert shard_threads(1, 0) == 1


def test_a_full_agent_runs_far_fewer_threads_than_cpus_squared():
    # Shards start one after another on an agent with as many slots as CPUs (the default).
    cpus = 64
    total = sum(shard_threads(cpus, running) for running in range(1, cpus + 1))
    assert total < 5 * cpus < cpus * cpus
