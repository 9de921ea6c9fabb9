"""predict.py's inputs as cog reads them: the OpenAPI document for coglet, and checks for the CLI.

coglet validates every request against `.cog/openapi_schema.json` and serves it at /openapi.json;
`cog build` writes it with its Go parser, which needs Docker, so a local run builds the same
document from cog's Python inspector of predict.py. cog 0.23 has no public API for reading a
predictor's inputs: this is the only module that touches its private `_inspector` and `_adt`
(tests/api/test_cog_schema.py fails loudly if a cog upgrade changes what we use).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .. import environment
from ..files import atomic_write

SCHEMA_PATH = environment.REPO_ROOT / ".cog" / "openapi_schema.json"

ERROR_RESPONSE = {
    "description": "Validation Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
}
ANY_JSON: dict[str, Any] = {"application/json": {"schema": {}}}


def title_case(name: str) -> str:
    return " ".join(part.capitalize() for part in name.split("_"))


class InputCheckError(ValueError):
    """An input value that cog's own checks refuse; `input_name` says which."""

    def __init__(self, name: str, message: str):
        self.input_name = name
        super().__init__(message)


def read_predictor(module: str = "predict", predictor: str = "Predictor") -> Any:
    """cog's description of predict.py's Predictor (a `cog._adt.PredictorInfo`)."""
    from cog import _inspector

    if str(environment.REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(environment.REPO_ROOT))
    return _inspector.create_predictor(module, predictor)


def type_name(info: Any, name: str) -> str:
    """cog's name for the type of input `name` (`integer`, `float`, `path`...)."""
    return str(info.inputs[name].type.primitive.name.lower())


def check_inputs(info: Any, values: dict[str, Any]) -> dict[str, Any]:
    """`values` converted and checked as the server checks them, defaults filled in.

    Each value is checked on its own first, so that a refusal names its input without
    reading cog's message.
    """
    from cog import _inspector

    for name, value in values.items():
        try:
            _inspector.check_input({name: info.inputs[name]}, {name: value})
        except ValueError as exc:
            raise InputCheckError(name, str(exc)) from None
    return dict(_inspector.check_input(info.inputs, values))


def input_schema(info: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Input object schema and one enum schema per input with choices."""
    from cog._adt import Repetition

    properties: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    required = []
    for name, field in sorted(info.inputs.items(), key=lambda item: item[1].order):
        prop: dict[str, Any] = {"x-order": field.order}
        if field.choices:
            enums[name] = {
                "title": name,
                "description": "An enumeration.",
                "enum": list(field.choices),
                "type": field.type.primitive.json_type()["type"],
            }
            prop["allOf"] = [{"$ref": f"#/components/schemas/{name}"}]
        else:
            prop["title"] = title_case(name)
            prop.update(field.type.json_type())
        nullable = field.type.repetition in (Repetition.OPTIONAL, Repetition.OPTIONAL_REPEATED)
        has_default = field.default is not None or nullable
        if not has_default and field.type.repetition in (Repetition.REQUIRED, Repetition.REPEATED):
            required.append(name)
        if has_default:
            prop["default"] = field.default
        if nullable:
            prop["nullable"] = True
        if field.description is not None:
            prop["description"] = field.description
        for attribute, keyword in (
            ("ge", "minimum"),
            ("le", "maximum"),
            ("min_length", "minLength"),
            ("max_length", "maxLength"),
            ("regex", "pattern"),
        ):
            value = getattr(field, attribute)
            if value is not None:
                prop[keyword] = int(value) if isinstance(value, float) and value.is_integer() else value
        properties[name] = prop
    schema: dict[str, Any] = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def build_schema(module: str = "predict", predictor: str = "Predictor") -> dict[str, Any]:
    """The OpenAPI document `cog build` would write for `module.predictor`."""
    info = read_predictor(module, predictor)
    inputs, enums = input_schema(info)
    output = {"title": "Output", **info.output.json_type()}
    output.pop("x-cog-array-type", None)
    components = {
        "Input": inputs,
        "Output": output,
        **enums,
        "PredictionRequest": {
            "title": "PredictionRequest",
            "type": "object",
            "properties": {"id": {"title": "Id", "type": "string"}, "input": {"$ref": "#/components/schemas/Input"}},
        },
        "PredictionResponse": {
            "title": "PredictionResponse",
            "type": "object",
            "properties": {
                "input": {"$ref": "#/components/schemas/Input"},
                "output": {"$ref": "#/components/schemas/Output"},
                **{key: {"title": title_case(key), "type": "string"} for key in ("id", "version")},
                **{
                    key: {"title": title_case(key), "type": "string", "format": "date-time"}
                    for key in ("created_at", "started_at", "completed_at")
                },
                **{key: {"title": title_case(key), "type": "string"} for key in ("status", "error", "logs")},
                "metrics": {"title": "Metrics", "type": "object"},
            },
        },
        "Status": {
            "title": "Status",
            "description": "An enumeration.",
            "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
            "type": "string",
        },
        "HTTPValidationError": {
            "title": "HTTPValidationError",
            "type": "object",
            "properties": {
                "detail": {
                    "title": "Detail",
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/ValidationError"},
                }
            },
        },
        "ValidationError": {
            "title": "ValidationError",
            "required": ["loc", "msg", "type"],
            "type": "object",
            "properties": {
                "loc": {
                    "title": "Location",
                    "type": "array",
                    "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                },
                "msg": {"title": "Message", "type": "string"},
                "type": {"title": "Error Type", "type": "string"},
            },
        },
    }
    paths = {
        "/": {
            "get": {
                "summary": "Root",
                "operationId": "root__get",
                "responses": {"200": {"description": "Successful Response", "content": ANY_JSON}},
            }
        },
        "/health-check": {
            "get": {
                "summary": "Healthcheck",
                "operationId": "healthcheck_health_check_get",
                "responses": {"200": {"description": "Successful Response", "content": ANY_JSON}},
            }
        },
        "/predictions": {
            "post": {
                "summary": "Predict",
                "description": "Run a single prediction on the model",
                "operationId": "predict_predictions_post",
                "requestBody": {
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictionRequest"}}}
                },
                "responses": {
                    "200": {
                        "description": "Successful Response",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/PredictionResponse"}}
                        },
                    },
                    "422": ERROR_RESPONSE,
                },
            }
        },
        "/predictions/{prediction_id}/cancel": {
            "post": {
                "summary": "Cancel",
                "operationId": "cancel_predictions__prediction_id__cancel_post",
                "parameters": [
                    {
                        "required": True,
                        "schema": {"title": "Prediction Id", "type": "string"},
                        "name": "prediction_id",
                        "in": "path",
                    }
                ],
                "responses": {
                    "200": {"description": "Successful Response", "content": ANY_JSON},
                    "422": ERROR_RESPONSE,
                },
            }
        },
    }
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": components},
    }


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    """Write the document for predict.py to `path`, replacing any previous one in one rename."""
    with atomic_write(path) as partial:
        partial.write_text(json.dumps(build_schema(), indent=2) + "\n")
    return path
