"""The files to deploy the server (deploy/): what can be checked here is.

- The Containerfile's commands run on this host as the image runs them: its
  build stage makes the wheels, its runtime stage installs them into a fresh
  virtual environment, and its command starts the server with its
  environment, until its health check passes; its stop signal drains it.
- The systemd unit passes ``systemd-analyze verify``, and its command tells
  the notify socket READY=1 and STOPPING=1 (``Type=notify``).
- The Kubernetes manifests validate against the API's schemas
  (kubernetes-validate), with the probes and ports the server has.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import pytest
import yaml

from imageserver.config import Config, _threads
from imageserver.metrics.tracing import FLUSH_SECONDS
from imageserver.runtime.shutdown import SENDING_SECONDS
from tests.support import encode, quadrants

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(CHECKOUT, "deploy")
#: The Kubernetes version the manifests are checked against.
KUBERNETES = "1.37.0"


def instructions(path: str) -> list[list[tuple[str, str]]]:
    """A Containerfile's stages, each a list of (instruction, arguments),
    continuation lines joined and comments dropped."""
    with open(path) as f:
        text = re.sub(r"\\\n", " ", f.read())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, seconds: float = 30) -> bytes:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.read()  # type: ignore[no-any-return]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_containerfile_runs_as_the_image_would(tmp_path: Any) -> None:
    build, runtime = instructions(os.path.join(DEPLOY, "Containerfile"))
    wheels, home = tmp_path / "wheels", tmp_path / "home"
    home.mkdir()

    def here(text: str) -> str:
        """A path of the image, on this host."""
        return (
            text.replace("/wheels", str(wheels))
            .replace("/var/lib/imageserver", str(home))
            .replace("/src", CHECKOUT)
        )

    # The build stage: wheels of the checkout and all it needs.
    assert ("COPY", ". .") in build
    for word, rest in build:
        if word == "RUN":
            subprocess.run(here(rest), shell=True, cwd=CHECKOUT, check=True)
    # The runtime stage, in a fresh virtual environment for its Python.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    path = f"{venv}/bin:{os.environ['PATH']}"
    env: dict[str, str] = {"PATH": path, "HOME": str(home)}
    user = command = health = stop = None
    for word, rest in runtime:
        if word == "RUN" and "useradd" not in rest:  # no users made here
            subprocess.run(here(rest), shell=True, check=True, env=env)
        elif word == "USER":
            user = rest
        elif word == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = here(value)
        elif word == "CMD":
            command = json.loads(rest)
        elif word == "HEALTHCHECK":
            health = json.loads(rest.partition("CMD ")[2])
        elif word == "STOPSIGNAL":
            stop = getattr(signal, rest)
    assert user is not None and not user.startswith(("0", "root")), user
    assert command is not None and health is not None and stop is not None
    assert not (wheels).exists()  # removed by the install's own command
    main, admin = free_port(), free_port()
    assert env["IMAGESERVER_PORT"] == "7000" and env["IMAGESERVER_ADMIN_PORT"] == "7002"
    env.update(IMAGESERVER_PORT=str(main), IMAGESERVER_ADMIN_PORT=str(admin))
    env["IMAGESERVER_LISTEN"] = "127.0.0.1"  # 0.0.0.0 in the image; loopback here
    # The image can trace (its extra is installed); no receiver: nothing lost.
    env["IMAGESERVER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{free_port()}/v1/traces"
    server = subprocess.Popen(
        command, env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for(f"http://127.0.0.1:{admin}/probe/ready")
        checked = [part.replace("7002", str(admin)) for part in health]
        subprocess.run(checked, env=env, check=True, timeout=10)
        photo = encode(quadrants((80, 60)))
        upload = urllib.request.Request(f"http://127.0.0.1:{main}/p", data=photo)
        with urllib.request.urlopen(upload, timeout=10) as answer:
            digest = json.loads(answer.read())["hash"]
        folder = f"p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"
        wait_for(f"http://127.0.0.1:{main}/{folder}/w40.webp")
        assert (home / "store" / folder / "w40.webp").exists()
        server.send_signal(stop)
        assert server.wait(timeout=int(env["IMAGESERVER_SHUTDOWN_TIMEOUT"]) + 10) == 0
    finally:
        if server.poll() is None:
            server.kill()
        output = server.communicate()[0].decode(errors="replace")
    # JSON logs, one object a line, as the image sets.
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and all(json.loads(line) for line in lines), output[-2000:]
    # Its settings are all used: nothing to warn of (such as a setting whose
    # option is off). (The exporter's errors are the missing receiver's.)
    warned = [e for e in map(json.loads, lines) if e["level"] == "warn"]
    assert warned == [], warned


def stop_budget() -> int:
    """The longest stop with the defaults (docs/operations.md, Shutdown):
    --shutdown_timeout, then a render's --processing_timeout and its
    answer's seconds to leave, and the last traces' flush."""
    config = Config()
    flush = FLUSH_SECONDS
    total = (
        config.shutdown_timeout + config.processing_timeout + SENDING_SECONDS + flush
    )
    return math.ceil(total)


#: Where a supervisor is told how long a stop may take: a file, and the
#: patterns of each mention of the figure in it.
STOP_TIMES = {
    ("deploy", "Containerfile"): (r"--stop-timeout (\d+)", r"container (\d+) s"),
    ("deploy", "imageserver.service"): (r"TimeoutStopSec=(\d+)", r"fit in (\d+) s"),
    ("docs", "deploy.md"): (
        r"--stop-timeout (\d+)",
        r"stop_grace_period: (\d+)s",
        r"TimeoutStopSec=(\d+)",
        r"give it (\d+)",
    ),
    ("docs", "operations.md"): (r"(\d+) s with\s+the defaults",),
}


def test_every_file_gives_a_stop_the_same_time() -> None:
    """One figure, wherever a supervisor is told how long a stop may take."""
    for path, patterns in STOP_TIMES.items():
        with open(os.path.join(CHECKOUT, *path)) as f:
            text = f.read()
        for pattern in patterns:
            found = re.findall(pattern, text)
            assert found, (path, pattern)
            assert set(found) == {str(stop_budget())}, (path, pattern, found)


def _unit(twistd: str) -> str:
    with open(os.path.join(DEPLOY, "imageserver.service")) as f:
        return f.read().replace("/opt/imageserver/bin/twistd", twistd)


def test_the_systemd_unit_verifies() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    twistd = shutil.which("twistd")
    assert twistd is not None
    with tempfile.TemporaryDirectory() as folder:
        unit = os.path.join(folder, "imageserver.service")
        with open(unit, "w") as f:
            f.write(_unit(twistd))
        result = subprocess.run(
            [analyze, "verify", unit], capture_output=True, text=True
        )
    assert result.returncode == 0, result.stdout + result.stderr
    text = _unit(twistd)
    for setting in (
        "Type=notify",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ReadWritePaths=/var/lib/imageserver",
        "KillSignal=SIGTERM",
    ):
        assert setting in text.splitlines(), setting


def test_the_units_command_notifies_systemd(tmp_path: Any) -> None:
    """The unit's ExecStart, run with a notify socket as systemd gives it:
    READY=1 once the ports answer, STOPPING=1 at SIGTERM, and a clean exit;
    with workers, only the process systemd started speaks."""
    twistd = shutil.which("twistd")
    assert twistd is not None
    (exec_start,) = re.findall(r"^ExecStart=(.*)$", _unit(twistd), re.MULTILINE)
    environment = dict(
        line.partition("=")[2].split("=", 1)
        for line in _unit(twistd).splitlines()
        if line.startswith("Environment=")
    )
    for workers in ("1", "2"):
        address = str(tmp_path / f"notify-{workers}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(address)
            listener.settimeout(30)
            main, admin = free_port(), free_port()
            env = {
                **os.environ,
                **{
                    k: v.replace("/var/lib/imageserver", str(tmp_path))
                    for k, v in environment.items()
                },
                "NOTIFY_SOCKET": address,
                "IMAGESERVER_PORT": str(main),
                "IMAGESERVER_ADMIN_PORT": str(admin),
                "IMAGESERVER_WORKERS": workers,
            }
            server = subprocess.Popen(
                shlex.split(exec_start), env=env, cwd=tmp_path,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                assert listener.recv(100) == b"READY=1"
                wait_for(f"http://127.0.0.1:{admin}/probe/ready", 5)
                server.send_signal(signal.SIGTERM)
                assert listener.recv(100) == b"STOPPING=1"
                assert server.wait(timeout=60) == 0
                listener.settimeout(0.5)
                with pytest.raises(TimeoutError):  # nothing more, from no worker
                    listener.recv(100)
            finally:
                if server.poll() is None:
                    server.kill()
                    server.wait()


def test_the_kubernetes_manifests_validate() -> None:
    import kubernetes_validate

    with open(os.path.join(DEPLOY, "kubernetes", "imageserver.yaml")) as f:
        documents = list(yaml.safe_load_all(f))
    kinds = [doc["kind"] for doc in documents]
    assert kinds == ["Deployment", "Service", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler"]  # fmt: skip
    for doc in documents:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    (container,) = documents[0]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 7000, "admin": 7002}  # the image's
    assert container["readinessProbe"]["httpGet"]["path"] == "/probe/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/probe/live"
    env = {e["name"]: e.get("value") for e in container["env"]}
    pod = documents[0]["spec"]["template"]["spec"]
    wait = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] == wait + stop_budget()
    with open(os.path.join(CHECKOUT, "docs", "deploy.md")) as f:
        said = f.read()
    assert f"terminationGracePeriodSeconds: {wait + stop_budget()}" in said
    assert f"preStop` wait of {wait} s" in said
    threads = env["IMAGESERVER_PROCESSOR_CONCURRENCY"]
    cpus = int(container["resources"]["requests"]["cpu"])
    assert threads == str(_threads(cpus, int(env["IMAGESERVER_WORKERS"])))
    assert env["IMAGESERVER_WORKERS"] == str(container["resources"]["requests"]["cpu"])
