"""The OpenAPI 3.1 description of the main port, served at ``/openapi.json``.

docs/openapi.json is a copy (``python -m imageserver.web.openapi > docs/openapi.json``);
a test keeps the two equal, and runs schemathesis against a live server with it.
"""

from __future__ import annotations

import json
from typing import Any

from imageserver import __version__
from imageserver.naming import NAMESPACE_PATTERN


def _json(description: str, schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {
        "description": description,
        "content": {"application/json": {"schema": ref}},
    }


def _error(description: str) -> dict[str, Any]:
    return _json(description, "Error")


_ERRORS = {
    "400": _error("A malformed variant name, parameter or file name."),
    "403": _error(
        "Refused: not a preset, a missing or wrong signature, a source"
        " address that may not be reached."
    ),
    "404": _error("No such namespace, image, file, extension or source."),
    "413": _error("A body or source over --max_source_bytes."),
    "415": _error("Not a whole, decodable image in an accepted format."),
    "422": _error(
        "An image over --max_source_pixels or --max_pixels_per_byte, or an "
        "output too big to encode."
    ),
    "502": _error("The source URL or the storage failed."),
    "503": _error("Busy or storage unavailable; see Retry-After."),
    "504": _error("The source URL did not answer within --http_timeout."),
    "507": _error("The storage is full."),
}

_FOLDER_PARAMETERS = [
    {
        "name": "namespace",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": f"^{NAMESPACE_PATTERN}$"},
    },
    {
        "name": "h1",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{3}$"},
    },
    {
        "name": "h2",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{3}$"},
    },
    {
        "name": "h3",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{3}$"},
    },
    {
        "name": "h4",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{23}$"},
    },
]

_OUTPUTS = {
    "name": "outputs",
    "in": "query",
    "description": "Comma-separated variant names (x300.jpg,w100.webp), at most 32.",
    "schema": {"type": "string"},
}

_IMAGE_BODY = {
    "required": False,
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
    },
}


def spec() -> dict[str, Any]:
    info_response = _json("The original's info.json.", "ImageInfo")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imageserver",
            "version": __version__,
            "description": "Upload originals; get variants by name. See docs/api.md.",
        },
        "paths": {
            "/status_check": {
                "get": {
                    "operationId": "statusCheck",
                    "responses": {
                        "200": {
                            "description": "The server is up.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Message"}
                                }
                            },
                        }
                    },
                }
            },
            "/{namespace}": {
                "post": {
                    "operationId": "upload",
                    "summary": "Store an original: the body, or ?source=URL.",
                    "parameters": [
                        _FOLDER_PARAMETERS[0],
                        {
                            "name": "source",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "An http(s) URL to fetch the original from.",
                        },
                        _OUTPUTS,
                    ],
                    "requestBody": _IMAGE_BODY,
                    "responses": {"200": info_response, **_ERRORS},
                }
            },
            "/{namespace}/batch": {
                "post": {
                    "operationId": "createBatch",
                    "summary": "Process many images in the background.",
                    "parameters": [_FOLDER_PARAMETERS[0], _OUTPUTS],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "text/plain": {
                                "schema": {
                                    "type": "string",
                                    "description": "One item a line: a URL and/or "
                                    "an md5 hash, tab-separated.",
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json("The job was created.", "BatchCreated"),
                        **_ERRORS,
                    },
                }
            },
            "/{namespace}/batch/{job_id}": {
                "get": {
                    "operationId": "batch",
                    "parameters": [
                        _FOLDER_PARAMETERS[0],
                        {
                            "name": "job_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "format": "uuid"},
                        },
                    ],
                    "responses": {
                        "200": _json("Finished, with every item.", "Batch"),
                        "202": _json("Still running.", "Batch"),
                        **_ERRORS,
                    },
                }
            },
            "/{namespace}/{h1}/{h2}/{h3}/{h4}/info.json": {
                "get": {
                    "operationId": "info",
                    "parameters": _FOLDER_PARAMETERS,
                    "responses": {"200": info_response, **_ERRORS},
                }
            },
            "/{namespace}/{h1}/{h2}/{h3}/{h4}/process": {
                "post": {
                    "operationId": "process",
                    "summary": "Generate the listed variants that are missing.",
                    "parameters": [*_FOLDER_PARAMETERS, {**_OUTPUTS, "required": True}],
                    "responses": {"200": {"description": "All are stored."}, **_ERRORS},
                }
            },
            "/{namespace}/{h1}/{h2}/{h3}/{h4}/{name}": {
                "get": {
                    "operationId": "get",
                    "summary": "A variant (w200.jpg, x200.webp, 300x200-q30.png, "
                    "full_size.avif, ...), the original, or a stored file.",
                    "parameters": [
                        *_FOLDER_PARAMETERS,
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The bytes, with ETag and Last-Modified.",
                            "content": {
                                "image/*": {
                                    "schema": {"type": "string", "format": "binary"}
                                }
                            },
                        },
                        "304": {
                            "description": "Not modified (If-None-Match, "
                            "If-Modified-Since)."
                        },
                        **_ERRORS,
                    },
                },
                "post": {
                    "operationId": "storeFile",
                    "summary": "Keep the body as a file in the image's folder.",
                    "parameters": [
                        *_FOLDER_PARAMETERS,
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": _IMAGE_BODY,
                    "responses": {"200": {"description": "Stored."}, **_ERRORS},
                },
            },
        },
        "components": {
            "schemas": {
                "ImageInfo": {
                    "type": "object",
                    "required": ["hash", "width", "height", "content_type"],
                    "properties": {
                        "hash": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                        "width": {"type": "integer", "minimum": 1},
                        "height": {"type": "integer", "minimum": 1},
                        "content_type": {"type": "string"},
                    },
                },
                "BatchCreated": {
                    "type": "object",
                    "required": ["job_id"],
                    "properties": {"job_id": {"type": "string", "format": "uuid"}},
                },
                "Batch": {
                    "type": "object",
                    "required": ["state", "total", "done", "failed"],
                    "properties": {
                        "state": {"enum": ["running", "done"]},
                        "total": {"type": "integer"},
                        "done": {"type": "integer"},
                        "failed": {"type": "integer"},
                        "items": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "hash": {"type": ["string", "null"]},
                                    "url": {"type": ["string", "null"]},
                                    "width": {"type": ["integer", "null"]},
                                    "height": {"type": ["integer", "null"]},
                                    "error": {"type": ["string", "null"]},
                                },
                            },
                        },
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "Message": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {"message": {"type": "string"}},
                },
            }
        },
    }


def spec_json() -> bytes:
    return json.dumps(spec(), indent=2, sort_keys=True).encode() + b"\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(spec_json().decode())
