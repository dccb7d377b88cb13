"""Throwaway local Redis servers for tests, examples and benchmarks (not public API).

``LocalRedisServer`` is one ``redis-server``; ``LocalRedisCluster`` is a
Redis Cluster of a few of them (masters only). Each listens on 127.0.0.1 on
a free port, keeps nothing on disk (no RDB snapshots, no append-only file,
its working directory is a temporary one), and is stopped by its process id.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["LocalRedisCluster", "LocalRedisServer", "ServerUnavailable", "free_port"]


class ServerUnavailable(RuntimeError):
    """``redis-server`` is not installed or did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalRedisServer:
    """Start with ``start()`` (or ``with``), read ``url``, stop with ``stop()``.

    ``extra_args`` are added to the command line (for example TLS options);
    with ``tls=True`` the free port becomes the TLS port and the plain port
    is disabled, so ``port`` is the TLS one.
    """

    def __init__(
        self,
        executable: str = "redis-server",
        *,
        extra_args: tuple[str, ...] = (),
        tls: bool = False,
        start_timeout: float = 10.0,
    ) -> None:
        self.executable = executable
        self.extra_args = extra_args
        self.tls = tls
        self.start_timeout = start_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._directory: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> str:
        """Start the server and wait until it accepts connections; returns its URL."""
        path = shutil.which(self.executable)
        if path is None:
            raise ServerUnavailable(f"{self.executable!r} is not installed (not on PATH)")
        self._directory = tempfile.TemporaryDirectory(prefix="spark-redis-")
        error: Exception | None = None
        for _ in range(3):  # a port found free can be taken before the server binds it
            self.port = free_port()
            try:
                self._spawn(path)
                return self.url
            except ServerUnavailable as failure:
                error = failure
                self._terminate()
        self.stop()
        raise ServerUnavailable(f"redis-server did not start: {error}")

    def _spawn(self, path: str) -> None:
        assert self._directory is not None
        ports = (
            ["--port", "0", "--tls-port", str(self.port)]
            if self.tls
            else ["--port", str(self.port)]
        )
        command = [
            path,
            *ports,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._directory.name,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *self.extra_args,
        ]
        log = Path(self._directory.name, f"redis-{self.port}.log")
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerUnavailable(
                    f"exited with status {self.process.returncode}: "
                    f"{log.read_text(errors='replace').strip()[-500:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise ServerUnavailable(f"not listening on port {self.port} after {self.start_timeout} s")

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # signals this PID only
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        """Stop the server and start it again, on the same port and in the same directory.

        What it keeps on disk survives (pass ``--appendonly yes`` in
        ``extra_args`` for that); it stops with SIGTERM, so it saves first.
        """
        path = shutil.which(self.executable)
        if path is None or self._directory is None:
            raise ServerUnavailable("the server was not started")
        self._terminate()
        self._spawn(path)

    def stop(self) -> None:
        """Stop the server (by its PID) and remove its directory; safe to call twice."""
        self._terminate()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    @property
    def directory(self) -> Path:
        """The server's working directory, removed by ``stop()``."""
        if self._directory is None:
            raise RuntimeError("the server is not started")
        return Path(self._directory.name)

    def __enter__(self) -> LocalRedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class LocalRedisCluster:
    """A Redis Cluster of ``masters`` local servers, every slot assigned, no replicas.

    Start with ``start()`` (or ``with``), read ``url`` (any node's URL
    reaches the whole cluster through a cluster client), stop with
    ``stop()``. Needs ``redis-server`` and ``redis-cli`` (Redis >= 7: each
    node's cluster bus gets its own free port).
    """

    def __init__(
        self, masters: int = 3, *, start_timeout: float = 20.0, node_timeout_ms: int = 15_000
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.masters = masters
        # How long a node may not answer before the others mark it failed (and,
        # with no replica to take over, the cluster stops serving): Redis's
        # default, long enough for a busy test machine.
        self.node_timeout_ms = node_timeout_ms
        self.start_timeout = start_timeout
        self.servers: list[LocalRedisServer] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.servers[0].port}"

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def start(self) -> str:
        """Start the servers, join them into a cluster and wait until it serves every slot."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise ServerUnavailable("'redis-cli' is not installed (not on PATH)")
        try:
            for _ in range(self.masters):
                server = LocalRedisServer(
                    extra_args=(
                        "--cluster-enabled", "yes",
                        "--cluster-port", str(free_port()),
                        "--cluster-node-timeout", str(self.node_timeout_ms),
                    ),
                )  # fmt: skip
                self.servers.append(server)
                server.start()
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            created = subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=self.start_timeout,
                stdin=subprocess.DEVNULL,
            )
            if created.returncode != 0:
                raise ServerUnavailable(
                    f"redis-cli --cluster create failed: {created.stdout[-500:]}{created.stderr}"
                )
            self._wait_until_ok(cli)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait_until_ok(self, cli: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        waiting = list(self.ports)
        while waiting:
            info = subprocess.run(
                [cli, "-p", str(waiting[0]), "cluster", "info"],
                capture_output=True,
                text=True,
                timeout=5,
                stdin=subprocess.DEVNULL,
            )
            if "cluster_state:ok" in info.stdout:
                waiting.pop(0)
            elif time.monotonic() > deadline:
                raise ServerUnavailable(
                    f"the cluster did not reach cluster_state:ok in {self.start_timeout} s"
                )
            else:
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop every server (by its PID) and remove their directories; safe to call twice."""
        for server in self.servers:
            server.stop()
        self.servers.clear()

    def __enter__(self) -> LocalRedisCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
