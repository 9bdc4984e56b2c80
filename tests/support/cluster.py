"""A JetStream cluster of real nats-server processes on loopback, for fault tests.

Each node is an `EmbeddedNatsServer` (the same start, readiness probe and stop as
the single-server fixtures) with its own store dir, client port and route port,
all on 127.0.0.1; the nodes route to each other under one `--cluster_name`.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal

import nats
import nats.errors

from llm_es.embedded import EmbeddedNatsServer, pick_free_port

CLUSTER_NAME = "llm-es-test"
HOST = "127.0.0.1"
READY_SECONDS = 20.0


class NatsCluster:
    """`size` nats-server nodes with JetStream, clustered; `urls` lists every client URL."""

    def __init__(self, data_dir: pathlib.Path, size: int = 3) -> None:
        route_ports = [pick_free_port(HOST) for _ in range(size)]
        routes = ",".join(f"nats://{HOST}:{port}" for port in route_ports)
        self.nodes = [
            EmbeddedNatsServer(
                data_dir / f"node{index}",
                host=HOST,
                port=pick_free_port(HOST),
                extra_arguments=(
                    "--cluster_name",
                    CLUSTER_NAME,
                    "--cluster",
                    f"nats://{HOST}:{route_port}",
                    "--routes",
                    routes,
                ),
            )
            for index, route_port in enumerate(route_ports)
        ]

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated (as `nats.url` takes them)."""
        return ",".join(node.url for node in self.nodes)

    @property
    def servers(self) -> list[str]:
        """Every node's client URL (as `nats.connect` takes them)."""
        return [node.url for node in self.nodes]

    def node_named(self, server_name: str) -> EmbeddedNatsServer:
        return next(node for node in self.nodes if node.server_name == server_name)

    async def start(self) -> None:
        """Start every node, then wait until JetStream answers (a meta leader is elected)."""
        await asyncio.gather(*(node.start() for node in self.nodes))
        nc = await nats.connect(self.servers, max_reconnect_attempts=2)
        try:
            async with asyncio.timeout(READY_SECONDS):
                while True:
                    try:
                        await nc.jetstream().account_info()
                        return
                    except (nats.errors.Error, TimeoutError):
                        await asyncio.sleep(0.1)
        finally:
            await nc.close()

    async def kill(self, node: EmbeddedNatsServer) -> None:
        """SIGKILL one node (no flush, no goodbye to its peers) and reap it."""
        assert node.pid is not None
        os.kill(node.pid, signal.SIGKILL)
        await node.stop()

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))
