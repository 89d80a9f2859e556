"""A real S3-protocol server (moto_server) on a loopback port, for the tests."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from typing import Any

import boto3

CREDENTIALS = {"aws_access_key_id": "test-key", "aws_secret_access_key": "test-secret"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """``moto_server`` as a child process; ``start`` returns once it listens."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> MotoServer:
        command = shutil.which("moto_server") or os.path.join(
            os.path.dirname(sys.executable), "moto_server"
        )
        self.process = subprocess.Popen(
            [command, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )
        listening = threading.Event()

        def read(stream: Any) -> None:
            # Reads every line, so the server never blocks on a full pipe.
            for line in stream:
                if "Running on" in line:
                    listening.set()

        threading.Thread(target=read, args=(self.process.stderr,), daemon=True).start()
        if not listening.wait(30):
            self.stop()
            raise RuntimeError("moto_server did not start")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1", **CREDENTIALS
        )

    def new_bucket(self) -> str:
        """A bucket of its own for one test, so tests never see each other."""
        name = f"test-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name


_shared: MotoServer | None = None


def shared() -> MotoServer:
    """One server for the whole run, started on first use."""
    global _shared
    if _shared is None:
        _shared = MotoServer().start()
        atexit.register(_shared.stop)
    return _shared
