"""Real Redis servers for the tests (never a mock).

- `LOCAL_URL`: the server every session and CI run starts at 127.0.0.1:6379 (nothing on disk);
  a test works under its own key prefix there (`unique_prefix`) and deletes every key under it
  (`delete_prefix`). The fixture `redis_prefix` (tests/conftest.py) does both.
- `RedisServer`: a `redis-server` of the test's own on a free port, to kill (SIGKILL), pause
  (SIGSTOP), resume (SIGCONT) and restart on the same port; it keeps nothing on disk. The
  fixture `own_redis` starts one and ends it, by its PID, at teardown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import redis

LOCAL_URL = "redis://127.0.0.1:6379/0"
SERVER_BINARY = shutil.which("redis-server") or "/usr/bin/redis-server"
#: How long a server may take to answer PING after it was started (a guard, not a bound).
START_GUARD = 10.0


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"aioclock-test-{uuid.uuid4().hex[:12]}"


def delete_prefix(prefix: str, url: str = LOCAL_URL) -> int:
    """Delete every key under `prefix:` (SCAN, not KEYS); how many there were."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A `redis-server` child process on 127.0.0.1:`port` (a free one unless told)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="aioclock-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The PID of the server now running (a restart makes a new one)."""
        assert self._process is not None, "the server is not running"
        return self._process.pid

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        options = {"port": str(self.port), "bind": "127.0.0.1", "save": "", "appendonly": "no"}
        argv = [SERVER_BINARY, "--dir", self._dir]
        for name, value in options.items():
            argv += (f"--{name}", value)
        self._process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2, socket_timeout=0.2)
        deadline = time.monotonic() + START_GUARD
        try:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server on port {self.port} exited {self._process.returncode}"
                    )
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return self
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server and reap it (what it held is gone: it keeps nothing)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # (a paused one dies as well either way)
            process.kill()
        if process is not None:
            process.wait(timeout=START_GUARD)

    def pause(self) -> None:
        """SIGSTOP: the server accepts connections (the kernel does) but answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: the server answers again; what it held is still there."""
        os.kill(self.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Kill the server (if it runs) and start an empty one on the same port."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """End the server for good and remove its folder."""
        self.kill()
        self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)
