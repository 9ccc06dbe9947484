"""JSON <-> proto for the Responses API, driven by the proto descriptors and the options in json.proto.

Every message type gets one encoder (generated source, in codec_encode.py) and one decoder, built on first use from
its descriptor:
- a oneof arm with a ``type_tag`` is flattened to ``{"type": tag, ...arm fields, ...the message's other fields}``;
- an arm without a tag is the bare value (``"auto"``, a string, a list);
- ``json_list`` messages are JSON arrays; ``rest`` Struct fields collect undeclared keys;
- unset ``nullable`` fields become ``null``; other unset optional fields are left out;
- enums are strings; int64 are JSON numbers; field names are the JSON names;
- a tag with an ``open_responses_tag`` decodes from either spelling; ``open_responses_tags`` lists the renames.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from switchboard.edge.codec_encode import LIST_VALUE as _LIST_VALUE
from switchboard.edge.codec_encode import STRUCT as _STRUCT
from switchboard.edge.codec_encode import VALUE as _VALUE
from switchboard.edge.codec_encode import Encoder as Encoder
from switchboard.edge.codec_encode import _enum_map, _msg_opt, _opt, _union_oneof
from switchboard.edge.codec_encode import encode as encode
from switchboard.responses.v1 import json_pb2

M = TypeVar("M", bound=Message)
Decoder = Callable[[Any, Any, str], None]
_INTS = {
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}
_FLOATS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


class CodecError(ValueError):
    """The JSON does not fit the schema. ``param`` is the JSON path of the offending value."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _message_type(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None
    return field.message_type


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def enum_to_json(desc: Any, number: int) -> str | None:
    return _enum_map(desc).to_json.get(number)


def enum_from_json(desc: Any, name: str) -> int | None:
    return _enum_map(desc).from_json.get(name)


# ---------------------------------------------------------------- encoding


def dumps(msg: Message) -> bytes:
    return orjson.dumps(encode(msg))


def open_responses_tags(desc: Descriptor) -> dict[str, str]:
    """The ``type`` tags of a union message whose Open Responses spelling differs: {OpenAI tag: Open Responses tag}."""
    oneof = _union_oneof(desc)
    if oneof is None:
        return {}
    return {_opt(f, json_pb2.type_tag): alt for f in desc.oneofs_by_name[oneof].fields
            if (alt := _opt(f, json_pb2.open_responses_tag))}


# ---------------------------------------------------------------- decoding

_decoders: dict[str, Decoder] = {}


def _decoder(desc: Any) -> Decoder:
    found = _decoders.get(desc.full_name)
    if found is None:
        found = _decoders[desc.full_name] = _build_decoder(desc)
    return found


def _scalar(field: FieldDescriptor, value: Any, path: str) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        if isinstance(value, str):
            return value
        expected = "a string"
    elif kind == FieldDescriptor.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        expected = "a boolean"
    elif kind in _INTS:
        number = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, float) and value.is_integer():
            number = int(value)
        low, high = _INT_RANGES.get(kind, (-(2**63), 2**63 - 1))
        if number is not None and low <= number <= high:
            return number
        if number is not None:
            raise CodecError(f"Invalid value for '{path}': {number} is out of range.", path)
        expected = "an integer"
    elif kind in _FLOATS:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        expected = "a number"
    elif kind == FieldDescriptor.TYPE_ENUM:
        if isinstance(value, str):
            number = enum_from_json(field.enum_type, value)
            if number is not None:
                return number
        allowed = ", ".join(repr(v) for v in _enum_map(field.enum_type).from_json)
        raise CodecError(f"Invalid value for '{path}': expected one of {allowed}, got {value!r}.", path)
    else:
        expected = "bytes"
        if isinstance(value, str):
            return value.encode("latin-1")
    raise CodecError(f"Invalid type for '{path}': expected {expected}, but got {_json_type(value)}.", path)


def _set_field(field: FieldDescriptor, value: Any, msg: Any, path: str) -> None:
    name = field.name
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        sub_desc = _message_type(field)
        if sub_desc.GetOptions().map_entry:
            if not isinstance(value, dict):
                raise CodecError(f"Invalid type for '{path}': expected an object.", path)
            value_field = sub_desc.fields_by_name["value"]
            target = getattr(msg, name)
            for key, item in value.items():
                if item is None:
                    continue
                target[key] = _scalar(value_field, item, f"{path}.{key}")
            return
        if field.is_repeated:
            if not isinstance(value, list):
                raise CodecError(f"Invalid type for '{path}': expected an array, but got {_json_type(value)}.", path)
            container = getattr(msg, name)
            decode_sub = _decoder(sub_desc)
            for index, item in enumerate(value):
                decode_sub(item, container.add(), f"{path}[{index}]")
            return
        sub = getattr(msg, name)
        sub.SetInParent()
        _decoder(sub_desc)(value, sub, path)
        return
    if field.is_repeated:
        if not isinstance(value, list):
            raise CodecError(f"Invalid type for '{path}': expected an array, but got {_json_type(value)}.", path)
        getattr(msg, name).extend(_scalar(field, v, f"{path}[{i}]") for i, v in enumerate(value))
        return
    setattr(msg, name, _scalar(field, value, path))


# Free-form JSON nests as Struct/Value/ListValue messages, several protobuf levels per JSON level; protobuf
# refuses messages nested deeper than 100, so deeper JSON is a client error here rather than a failure later.
MAX_FREE_FORM_DEPTH = 20


def _depth(value: Any, limit: int) -> int:
    if limit < 0:
        return 1
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


def _py_to_struct(data: Any, msg: Any, path: str) -> None:
    if not isinstance(data, dict):
        raise CodecError(f"Invalid type for '{path}': expected an object, but got {_json_type(data)}.", path)
    if _depth(data, MAX_FREE_FORM_DEPTH) > MAX_FREE_FORM_DEPTH:
        raise CodecError(f"Invalid value for '{path}': JSON nested deeper than {MAX_FREE_FORM_DEPTH} levels.", path)
    try:
        msg.update(data)
    except (ValueError, TypeError) as exc:
        raise CodecError(f"Invalid value for '{path}': {exc}", path) from None


def _build_decoder(desc: Descriptor) -> Decoder:
    full = desc.full_name
    if full == _STRUCT:
        return _py_to_struct
    if full in (_VALUE, _LIST_VALUE):

        def decode_value(data: Any, msg: Any, path: str) -> None:
            holder = struct_pb2.Struct()
            _py_to_struct({"v": data}, holder, path)
            source = holder.fields["v"]
            msg.CopyFrom(source if full == _VALUE else source.list_value)

        return decode_value
    if _msg_opt(desc, json_pb2.json_list):
        (only,) = desc.fields

        def decode_list(data: Any, msg: Any, path: str) -> None:
            _set_field(only, data, msg, path)

        return decode_list
    oneof = _union_oneof(desc)
    fields = _fields_decoder(desc, oneof)
    if oneof is None:
        return fields
    return _union_decoder(desc, oneof, fields)


def _fields_decoder(desc: Descriptor, skip: str | None) -> Decoder:
    by_name = {
        f.name: f
        for f in desc.fields
        if not (skip is not None and f.containing_oneof is not None and f.containing_oneof.name == skip)
    }
    rest = next((f for f in by_name.values() if _opt(f, json_pb2.rest)), None)
    if rest is not None:
        del by_name[rest.name]
    closed = bool(_msg_opt(desc, json_pb2.closed))

    def decode_fields(data: Any, msg: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise CodecError(f"Invalid type for '{path}': expected an object, but got {_json_type(data)}.", path)
        extra: dict[str, Any] = {}
        for key, value in data.items():
            field = by_name.get(key)
            if field is None:
                if rest is not None:
                    extra[key] = value
                elif closed:
                    sub = _join(path, key)
                    raise CodecError(f"Unknown parameter: '{sub}'.", sub)
                continue
            if value is None:
                continue
            _set_field(field, value, msg, _join(path, key))
        if extra and rest is not None:
            _py_to_struct(extra, getattr(msg, rest.name), path)

    return decode_fields


def _union_decoder(desc: Descriptor, oneof: str, common: Decoder) -> Decoder:
    arms = desc.oneofs_by_name[oneof].fields
    tagged = {_opt(f, json_pb2.type_tag): f for f in arms if _opt(f, json_pb2.type_tag)}
    tagged |= {_opt(f, json_pb2.open_responses_tag): f for f in arms if _opt(f, json_pb2.open_responses_tag)}
    inferred = [(_opt(f, json_pb2.infer_key), f) for f in arms if _opt(f, json_pb2.infer_key)]
    catch_all = next((f for f in arms if _opt(f, json_pb2.catch_all)), None)
    bare = [f for f in arms if not _opt(f, json_pb2.type_tag) and not _opt(f, json_pb2.catch_all)]
    objects = [f for f in bare if f.type == FieldDescriptor.TYPE_MESSAGE]
    bare_object = next((f for f in objects if not _msg_opt(f.message_type, json_pb2.json_list)), None)
    tags = ", ".join(repr(t) for t in tagged)

    def decode_tagged(field: FieldDescriptor, data: dict[str, Any], msg: Any, path: str) -> None:
        inner = {k: v for k, v in data.items() if k != "type"}
        own = {f.name for f in _message_type(field).fields}
        outer = {k: inner.pop(k) for k in list(inner) if k not in own and k in desc.fields_by_name}
        common(outer, msg, path)
        sub = getattr(msg, field.name)
        sub.SetInParent()
        _decoder(field.message_type)(inner, sub, path)

    def decode_union(data: Any, msg: Any, path: str) -> None:
        if isinstance(data, dict):
            tag = data.get("type")
            if tag is not None:
                field = tagged.get(tag) if isinstance(tag, str) else None
                if field is not None:
                    decode_tagged(field, data, msg, path)
                    return
                if catch_all is not None and isinstance(tag, str):
                    _py_to_struct(data, getattr(msg, catch_all.name), path)
                    return
                param = _join(path, "type")
                raise CodecError(f"Invalid value for '{param}': expected one of {tags}, got {tag!r}.", param)
            for key, field in inferred:
                if key in data:
                    decode_tagged(field, data, msg, path)
                    return
            if bare_object is not None:
                _set_field(bare_object, data, msg, path)
                return
            param = _join(path, "type")
            raise CodecError(f"Missing required parameter: '{param}'.", param)
        for field in bare:
            if _accepts(field, data):
                _set_field(field, data, msg, path)
                return
        raise CodecError(f"Invalid type for '{path}': got {_json_type(data)}.", path)

    return decode_union


def _accepts(field: FieldDescriptor, data: Any) -> bool:
    """Whether a bare oneof arm takes a JSON value of this kind."""
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if _msg_opt(field.message_type, json_pb2.json_list):
            return isinstance(data, list)
        return isinstance(data, dict)
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_ENUM):
        return isinstance(data, str)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return isinstance(data, bool)
    return isinstance(data, int | float) and not isinstance(data, bool)


def decode(data: Any, cls: type[M], path: str = "") -> M:
    """A message of type ``cls`` from a JSON value. Raises CodecError naming the offending parameter."""
    msg = cls()
    _decoder(msg.DESCRIPTOR)(data, msg, path)
    return msg


def loads(body: bytes, cls: type[M]) -> M:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"The request body is not valid JSON: {exc}", "") from None
    if not isinstance(data, dict):
        raise CodecError(f"The request body must be a JSON object, but got {_json_type(data)}.", "")
    return decode(data, cls)
