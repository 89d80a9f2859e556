"""The OpenAPI description: valid, served, kept in docs/, and true to a live server."""

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from imageserver.web.openapi import spec, spec_json
from tests.s3server import free_port
from tests.support import AppHarness

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
schema = schemathesis.openapi.from_dict(spec())


def test_the_description_is_valid_openapi_3_1() -> None:
    validate(spec())
    assert spec()["openapi"] == "3.1.0"


def test_docs_hold_the_same_description() -> None:
    with open(os.path.join(CHECKOUT, "docs", "openapi.json"), "rb") as f:
        assert f.read() == spec_json(), "run: python -m imageserver.web.openapi"


class _Case:
    def mktemp(self) -> str:
        return "served"

    def successResultOf(self, d):  # type: ignore[no-untyped-def]
        results: list[object] = []
        d.addBoth(results.append)
        return results[0]

    def assertEqual(self, a: object, b: object, msg: object = None) -> None:
        assert a == b, msg


def test_the_server_serves_it() -> None:
    response, body = AppHarness(_Case()).request("GET", "/openapi.json")  # type: ignore[arg-type]
    assert response.code == 200
    assert json.loads(body) == spec()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``twistd imageserver`` on loopback, with one image in it."""
    port = free_port()
    root = tmp_path_factory.mktemp("openapi")
    process = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "--logfile=-", "imageserver", "--port", str(port),
         "--admin_port", "none", "--local_base_path", str(root / "store")],
        cwd=root, env={**os.environ, "PYTHONPATH": CHECKOUT},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    listening = threading.Event()

    def read() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            if f"starting on {port}" in line:
                listening.set()

    threading.Thread(target=read, daemon=True).start()
    assert listening.wait(30), "the server did not start"
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_server_error(case: schemathesis.Case, server: str) -> None:
    response = case.call(base_url=server)
    assert response.status_code < 500, (case.method, case.path, response.text)
    if response.status_code >= 400 and case.method != "HEAD":
        assert isinstance(response.json()["error"], str)
