"""A schema-driven generator of bad request bodies for POST /v1/responses, and the check of each reply.

Bodies follow the shape of ``CreateResponseRequest`` (walked from the proto descriptors and the codec's JSON options:
type tags, bare union arms, JSON lists, Struct fields) and are bent in many ways on the way: wrong JSON types,
out-of-range and huge numbers, long strings, unknown keys and tags, random items, content parts and tools, deep
nesting, and raw bodies that are not JSON or not UTF-8. Used by tests/e2e/test_fuzz.py and bench/fuzz.py.

The model is always absent, ``fake/echo`` or a malformed name, so no fake upstream failure mode (``fake/fail-500``,
``fake/slow-...``) is ever asked for: every 5xx is a gateway bug.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from switchboard.edge import codec
from switchboard.responses.v1 import json_pb2, responses_service_pb2
from switchboard.service.pipeline.validation import validate
from switchboard.shared.errors import ApiError
from tests.service.test_validation import CASES

Strategy = st.SearchStrategy[Any]
ERROR_KEYS = {"message", "type", "param", "code"}
_MODELS = [None] * 6 + ["fake/echo"] * 8 + ["", "echo", "fake/", "/echo", "nowhere/echo", "fake/echo/x"]
_INTS = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
         FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64}
_FLOATS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_SCHEMA_KEYS = ["type", "properties", "required", "items", "$schema", "pattern", "enum", "minimum", "$ref",
                "allOf", "anyOf", "additionalProperties", "format", "$defs", "minItems", "const", "description"]
_SCHEMA_URIS = ["http://json-schema.org/draft-07/schema#", "https://json-schema.org/draft/2020-12/schema",
                "http://json-schema.org/draft-04/schema#", "http://[", "", "urn:x", 5]

# ---------------------------------------------------------------- JSON values


@st.composite
def _weighted(draw: st.DrawFn, usual: Strategy, rare: Strategy, odds: int) -> Any:
    """``rare`` once in ``odds`` draws, else ``usual`` (one_of would weigh them equally)."""
    return draw(rare if draw(st.integers(0, odds - 1)) == odds // 2 else usual)  # 0 and odds-1 are drawn more


edge_strings = st.sampled_from(["", " ", "a" * 65, "b" * 257, "c" * 513, "fake/echo", "null", "[]", "{", "a[0]",
                                "\u0000", "\u202e", "😀" * 40, "input[0]", "openrouter:web_search"])
long_strings = st.integers(0, 300_000).map(lambda n: "x" * n)
strings = _weighted(st.one_of(st.text(max_size=24), edge_strings), long_strings, 10)
huge_ints = st.sampled_from([2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30])
ints = st.one_of(st.integers(-3, 40), st.sampled_from([0, -1, 1, 15, 16, 20, 21, 64, 65, 256, 257]), huge_ints)
edge_floats = st.sampled_from([0.0, -0.0, 1e-320, 2.0000001, -2.0000001, 1.0000001, 1e19, -1e19, 1.7e308, -1.7e308,
                               0.5, 1e300])
floats = st.one_of(st.floats(-5, 5, allow_nan=False), edge_floats)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, st.text(max_size=12), edge_strings)
json_values: Strategy = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                     st.dictionaries(st.text(max_size=8) | edge_strings, inner, max_size=4)),
    max_leaves=10)


def nested(depth: int, leaf: Any = 1) -> Any:
    """``depth`` levels of objects and arrays around ``leaf`` (protobuf and JSON parsers cap depth near 100)."""
    value = leaf
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


deep_values = st.integers(60, 400).map(nested)
json_objects = _weighted(st.dictionaries(st.text(max_size=8), json_values, max_size=5),
                         deep_values.map(lambda v: {"deep": v}), 8)
schema_like: Strategy = st.recursive(
    st.dictionaries(st.sampled_from(_SCHEMA_KEYS), st.one_of(scalars, st.sampled_from(_SCHEMA_URIS),
                                                             st.sampled_from(["object", "string", "x", "("])),
                    max_size=4),
    lambda inner: st.dictionaries(st.sampled_from(_SCHEMA_KEYS), st.one_of(inner, st.lists(inner, max_size=2)),
                                  max_size=3),
    max_leaves=8)
wrong = _weighted(json_values, deep_values, 8)


# ---------------------------------------------------------------- from the descriptors


def _opt(field: FieldDescriptor, ext: Any) -> Any:
    return field.GetOptions().Extensions[ext]


def _is_list(desc: Descriptor) -> bool:
    return bool(desc.GetOptions().Extensions[json_pb2.json_list])


def _union(desc: Descriptor) -> str | None:
    for oneof in desc.oneofs:
        if not (len(oneof.fields) == 1 and oneof.fields[0].has_presence and oneof.name.startswith("_")):
            return oneof.name
    return None


def _enum_names(field: FieldDescriptor) -> list[str]:
    desc = field.enum_type
    assert desc is not None
    return [name for v in desc.values if (name := codec.enum_to_json(desc, v.number)) is not None]


def _element(field: FieldDescriptor, depth: int) -> Strategy:
    """A plausible JSON value of one element of ``field``, bent now and then."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        if field.message_type.full_name == "google.protobuf.Struct":
            if field.name in ("parameters", "schema"):
                return st.one_of(schema_like, json_objects)
            return json_objects
        base = message(field.message_type, depth - 1)
    elif kind == FieldDescriptor.TYPE_STRING:
        base = strings
    elif kind == FieldDescriptor.TYPE_BOOL:
        base = st.booleans()
    elif kind in _INTS:
        base = ints
    elif kind in _FLOATS:
        base = floats
    elif kind == FieldDescriptor.TYPE_ENUM:
        names = st.sampled_from(_enum_names(field))
        base = _weighted(names, st.text(max_size=6), 5)
    else:
        base = strings
    return _weighted(base, wrong, 10)


def _value(field: FieldDescriptor, depth: int) -> Strategy:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        keys = st.one_of(st.text(max_size=8), edge_strings)
        return st.one_of(st.dictionaries(keys, _element(value_field, depth), max_size=20), wrong)
    if field.is_repeated:
        return st.one_of(st.lists(_element(field, depth), max_size=4), st.lists(_element(field, depth), max_size=10),
                         wrong)
    return _element(field, depth)


def _fields(desc: Descriptor, skip: str | None, depth: int) -> Strategy:
    """Up to 6 of the fields of ``desc`` (except the oneof ``skip``), and now and then unknown keys."""
    fields = [f for f in desc.fields if not (skip and f.containing_oneof and f.containing_oneof.name == skip)
              and not _opt(f, json_pb2.rest)]
    if not fields:
        return st.just({})
    values = {f.name: _value(f, depth) for f in fields}  # built once: strategies are costly to build per draw
    chosen = st.lists(st.sampled_from(sorted(values)), max_size=min(len(values), 6), unique=True)
    extra = _weighted(st.just({}), st.dictionaries(st.text(max_size=8), json_values, max_size=3), 10)

    @st.composite
    def draw_fields(draw: st.DrawFn) -> dict[str, Any]:
        out = {name: draw(values[name]) for name in draw(chosen)}
        out.update(draw(extra))  # unknown keys (or `rest` keys where the message has a rest Struct)
        return out

    return draw_fields()


_cache: dict[tuple[str, int], Strategy] = {}


def message(desc: Descriptor, depth: int = 4) -> Strategy:
    """JSON of a message of type ``desc``, following the codec's mapping."""
    key = (desc.full_name, depth)
    if key not in _cache:
        _cache[key] = wrong if depth <= 0 else _build(desc, depth)
    return _cache[key]


def _build(desc: Descriptor, depth: int) -> Strategy:
    if desc.full_name == "google.protobuf.Struct":
        return json_objects
    if _is_list(desc):
        (only,) = desc.fields
        return st.lists(_element(only, depth), max_size=5)
    oneof = _union(desc)
    if oneof is None:
        return _fields(desc, None, depth)
    arms = []
    for field in desc.oneofs_by_name[oneof].fields:
        tag = _opt(field, json_pb2.type_tag)
        if tag:
            assert field.message_type is not None
            arms.append(st.tuples(st.sampled_from([tag, tag, tag, None]), _fields(field.message_type, None, depth),
                                  _fields(desc, oneof, depth)).map(_tagged))
        elif _opt(field, json_pb2.catch_all):
            arms.append(st.tuples(st.one_of(st.text(max_size=10), st.sampled_from(
                ["web_search", "mcp", "file_search", "custom", "function", "namespace"])), json_objects).map(
                lambda pair: {**pair[1], "type": pair[0]}))
        else:
            arms.append(_element(field, depth))
    return st.one_of(arms)


def _tagged(parts: tuple[str | None, dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    tag, inner, common = parts
    out = {**common, **inner}
    if tag is not None:
        out["type"] = tag
    return out


# ---------------------------------------------------------------- bodies


@st.composite
def json_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A request object shaped like CreateResponseRequest, with a safe model and usually some input."""
    body = draw(message(responses_service_pb2.CreateResponseRequest.DESCRIPTOR, depth=5))
    if not isinstance(body, dict):
        body = {"input": body}
    body.pop("model", None)
    model = draw(st.sampled_from(_MODELS))
    if model is not None:
        body["model"] = model
    _keep_servable(body)
    if "input" not in body or draw(st.integers(0, 2)) == 0:  # mostly a usable input, so later rules are reached
        body["input"] = draw(st.one_of(st.just("hi"), _simple_items, st.text(max_size=20), message(
            responses_service_pb2.Input.DESCRIPTOR, depth=4)))
    how = draw(st.sampled_from(["as generated", "wrong type", "wrong type", "broken rule", "broken rule",
                                "broken rule"]))
    if how == "wrong type":  # one top-level field of a JSON type it can never take: the codec's 400
        name, value = draw(_wrong_types)
        body[name] = value
    elif how == "broken rule":  # a row of the validation table on top: the validator's 400
        body.update(copy.deepcopy(draw(_rules).body))
    return body


def _wrong_values(field: FieldDescriptor) -> list[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return ["x", 7, [1]]
    if field.is_repeated:
        return [{"a": 1}, "x", 7]
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return [7, True, 1.5]
    if field.type == FieldDescriptor.TYPE_STRING:
        return [7, True, {}, []]
    if field.type == FieldDescriptor.TYPE_BOOL:
        return ["yes", 1, {}]
    if field.type == FieldDescriptor.TYPE_ENUM:
        return ["no-such-value", 5, {}]
    if field.type in _INTS:
        return ["1", 1.5, {}, True]
    return ["x", {}, True]


_wrong_types = st.sampled_from([(f.name, v) for f in responses_service_pb2.CreateResponseRequest.DESCRIPTOR.fields
                                for v in _wrong_values(f)])
_rules = st.sampled_from([case for case in CASES if not case.big])


_simple_items = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer", "assistant"]),
                                                "content": st.text(max_size=10)}), min_size=1, max_size=3)


# Provider preferences that, when valid, may rule out every endpoint: a legitimate 503 (no provider meets the
# routing requirements), not a bad request. Valid ones are dropped; invalid ones stay (they must be a 400).
_EXCLUDING = ("only", "ignore", "quantizations", "zdr", "data_collection", "require_parameters", "max_price", "order",
              "allow_fallbacks")


def _keep_servable(body: dict[str, Any]) -> None:
    provider = body.get("provider")
    if not isinstance(provider, dict):
        return
    for key in [k for k in provider if k in _EXCLUDING]:
        try:
            validate(codec.decode({"provider": {key: provider[key]}}, responses_service_pb2.CreateResponseRequest))
        except (codec.CodecError, ApiError):
            continue
        del provider[key]


def _raw_variants(body: bytes, cut: int, junk: bytes) -> list[bytes]:
    cut = cut % max(len(body), 1)
    return [
        body[:cut],  # truncated
        body[:cut] + junk + body[cut:],  # bytes spliced in (often invalid UTF-8)
        body.replace(b'"', b"'", 1),
        b'{"input": "' + junk + b'"}',
        b'{"input": "\\ud800", "metadata": {"\\udfff": "x"}}',
        b'{"max_output_tokens": 1e999}',
        b'{"temperature": NaN}',
        b"[" * 5000 + b"]" * 5000,
        b'{"input": ' + b"[" * 200 + b"]" * 200 + b"}",
        b'{"tools": [{"type": "function", "name": "f", "parameters": ' + json.dumps(nested(150, {})).encode() + b"}]}",
        b"",
        b"null",
        b'"string"',
        b"\xef\xbb\xbf" + body,  # a UTF-8 BOM
        junk,
    ]


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Bodies that are not a JSON object: broken JSON, invalid UTF-8, other JSON values, binary noise."""
    body = _encode(draw(json_bodies()))
    variants = _raw_variants(body, draw(st.integers(0, 1 << 16)), draw(st.binary(min_size=1, max_size=24)))
    return variants[draw(st.integers(0, len(variants) - 1))]


def _encode(body: Any) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # ints beyond 64 bits, nesting beyond 255: the standard library writes them
        return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


_field_names = st.sampled_from([f.name for f in responses_service_pb2.CreateResponseRequest.DESCRIPTOR.fields])
_loose_objects = st.dictionaries(st.one_of(_field_names, st.text(max_size=8)), wrong, max_size=6)
# Mostly shaped bodies; one in 8 not JSON at all, one in 8 known keys with values of any type.
bodies: st.SearchStrategy[bytes] = _weighted(_weighted(json_bodies().map(_encode), raw_bodies(), 8),
                                             _loose_objects.map(_encode), 8)


# ---------------------------------------------------------------- the check


def problem(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> str | None:
    """What is wrong with a reply to a bad request, or None: no 5xx, every 4xx carries the error JSON, and a 429
    says when to retry (a 429 without Retry-After is an internal failure dressed as a rate limit)."""
    if status >= 500:
        return f"status {status}: {body[:300]!r}"
    if status < 400:
        return None
    if status == 429 and headers is not None and "retry-after" not in headers:
        return f"status 429 without Retry-After: {body[:300]!r}"
    try:
        error = orjson.loads(body)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"status {status} without the error JSON: {body[:300]!r}"
    if not isinstance(error, dict) or set(error) != ERROR_KEYS:
        return f"status {status}: the error has keys {sorted(error) if isinstance(error, dict) else error!r}"
    if not isinstance(error["message"], str) or not error["message"].strip():
        return f"status {status}: empty error message"
    if not isinstance(error["type"], str) or not error["type"]:
        return f"status {status}: empty error type"
    return None
