"""Throughput sanity check of the Target simulator (prints, asserts nothing).

Raw keep-alive HTTP/1.1 sockets in client threads, so the number measures the simulator rather
than an HTTP client library (httpx's AsyncClient tops out near 1k requests/s per process here).

    python benchmarks/simulator_throughput.py [connections] [requests_per_connection]
"""

from __future__ import annotations

import socket
import sys
import threading
import time

from devtools.simulator import SimulatorConfig, TargetSimulator


def _client(port: int, requests: int) -> None:
    request = (
        "GET /m2/acme/profile/update?mbox3rdPartyId=bench&profile.tier=gold HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(requests):
            sock.sendall(request)
            answer = b""
            while not answer.endswith(b"</response>"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("simulator closed the connection")
                answer += chunk


def main(connections: int = 32, per_connection: int = 300) -> None:
    with TargetSimulator(SimulatorConfig(max_records=1000)) as simulator:
        threads = [
            threading.Thread(target=_client, args=(simulator.port, per_connection))
            for _ in range(connections)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        total = connections * per_connection
        print(
            f"{total} requests on {connections} keep-alive connections in {elapsed:.2f} s: "
            f"{total / elapsed:,.0f} requests/s; accepted {simulator.accepted_count()}"
        )


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:3]))
