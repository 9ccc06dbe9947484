"""Validation of emitted JSON against the Open Responses OpenAPI (the authority for shapes)."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

# A copy of the Open Responses OpenAPI, release 2026-04-24.
SPEC_PATH = Path(__file__).resolve().parent / "data" / "openresponses-openapi.json"


@cache
def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    spec = copy.deepcopy(spec)
    # Spec defect: JsonSchemaResponseFormat declares `schema` as type null, which no real schema satisfies.
    spec["components"]["schemas"]["JsonSchemaResponseFormat"]["properties"]["schema"] = {
        "anyOf": [{"type": "object"}, {"type": "null"}]
    }
    # Spec defect: ReasoningEffortEnum describes `minimal` (OpenAI's and OpenRouter's value) but leaves it out of
    # the enum; the gateway accepts and echoes it (docs/compatibility.md).
    effort = spec["components"]["schemas"]["ReasoningEffortEnum"]
    if "minimal" in effort.get("x-enumDescriptions", {}) and "minimal" not in effort["enum"]:
        effort["enum"].append("minimal")
    return spec


@cache
def _registry() -> Registry[Any]:
    return Registry().with_resource("urn:openapi", DRAFT202012.create_resource(_spec()))


def _validator(name: str) -> Draft202012Validator:
    schema = {"$ref": f"urn:openapi#/components/schemas/{name}"}
    return Draft202012Validator(schema, registry=_registry())


@cache
def _event_schemas() -> dict[str, str]:
    union = _spec()["paths"]["/responses"]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    names: dict[str, str] = {}
    for ref in union["oneOf"]:
        name = ref["$ref"].rsplit("/", 1)[1]
        names[_spec()["components"]["schemas"][name]["properties"]["type"]["enum"][0]] = name
    return names


def event_types() -> set[str]:
    return set(_event_schemas())


def validate_response(data: dict[str, Any]) -> None:
    _validator("ResponseResource").validate(data)


def validate_event(data: dict[str, Any]) -> None:
    name = _event_schemas().get(data.get("type", ""))
    assert name is not None, f"unknown event type {data.get('type')!r}"
    _validator(name).validate(data)


def validate_schema(name: str, data: Any) -> None:
    _validator(name).validate(data)
