"""The OpenAPI 3.1 description of the main port, served at ``/openapi.json``.

It is data, shipped in the package (``openapi.json`` beside this module);
docs/openapi.json is a copy. Tests keep both in step with the routes, the
error map and the version, and run schemathesis against a live server.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def spec_json() -> bytes:
    """The description's bytes, as served and as kept in docs/."""
    return resources.files(__package__).joinpath("openapi.json").read_bytes()


def spec() -> dict[str, Any]:
    return json.loads(spec_json())  # type: ignore[no-any-return]


if __name__ == "__main__":
    import sys

    sys.stdout.write(spec_json().decode())
