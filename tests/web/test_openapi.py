"""The OpenAPI description: valid, served, kept in docs/, and true to a live server."""

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from imageserver import __version__
from imageserver.web.app import ImageServerApp
from imageserver.web.openapi import spec, spec_json
from imageserver.web.responses import STATUS_FOR
from tests import CHECKOUT_DIR
from tests.s3server import free_port
from tests.support import AppHarness

CHECKOUT = CHECKOUT_DIR
schema = schemathesis.openapi.from_dict(spec())


def test_the_description_is_valid_openapi_3_1() -> None:
    validate(spec())
    assert spec()["openapi"] == "3.1.0"


def test_docs_hold_the_same_description() -> None:
    with open(os.path.join(CHECKOUT, "docs", "openapi.json"), "rb") as f:
        assert f.read() == spec_json(), "run: python -m imageserver.web.openapi"


def test_version_is_the_packages() -> None:
    assert spec()["info"]["version"] == __version__


def _openapi_path(rule: str) -> str:
    """A Klein route (``/<image:image>/<name>``) as an OpenAPI path."""
    rule = rule.replace("<image:image>", "{namespace}/{h1}/{h2}/{h3}/{h4}")
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def test_every_route_and_method_is_described_and_nothing_else() -> None:
    routes: dict[str, set[str]] = {}
    for rule in ImageServerApp.app.url_map.iter_rules():
        methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
        routes.setdefault(_openapi_path(rule.rule), set()).update(methods)
    described: dict[str, set[str]] = {}
    for path, item in spec()["paths"].items():
        methods = {m for m in item if m in ("get", "post", "put", "delete", "patch")}
        # A path spelled out for one name (info.json) belongs to its route.
        route = path
        if path not in routes:
            pattern = re.compile(r"\{\w+\}")
            route = next(
                (r for r in routes if re.fullmatch(pattern.sub("[^/]+", r), path)),
                path,
            )
        described.setdefault(route, set()).update(methods)
    assert described == routes


def test_every_error_status_is_described() -> None:
    statuses = {str(code) for code in STATUS_FOR.values()}
    for path, item in spec()["paths"].items():
        for method, operation in item.items():
            if path in ("/status_check", "/openapi.json", "/healthcheck"):
                continue
            missing = statuses - set(operation["responses"])
            assert not missing, (path, method, missing)
    variant = spec()["paths"]["/{namespace}/{h1}/{h2}/{h3}/{h4}/{name}"]["get"]
    assert "301" in variant["responses"]  # other spellings of a variant name


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
    if response.status_code == 501:  # a method no route implements: not a fault
        assert case.method not in ("GET", "HEAD", "POST", "DELETE"), case.method
        return
    assert response.status_code < 500, (case.method, case.path, response.text)
    if response.status_code >= 400 and case.method != "HEAD":
        assert isinstance(response.json()["error"], str)
