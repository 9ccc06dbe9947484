"""The generated encoders write exactly what the closure-based encoder they replaced wrote: same keys, same values,
same key order (so the same bytes on the wire), for every message type of the API, filled in many ways."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2, wrappers_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from switchboard.edge import codec, codec_encode
from switchboard.edge.codec_encode import _enum_map, _opt, _struct_to_py, _union_oneof, _value_to_py
from switchboard.responses.v1 import (
    content_pb2,
    events_pb2,
    items_pb2,
    json_pb2,
    models_service_pb2,
    response_pb2,
    responses_service_pb2,
    tools_pb2,
)

# ---------------------------------------------------------------- the reference: the previous encoder, verbatim

Encoder = Callable[[Any], Any]
_ref_encoders: dict[str, Encoder] = {}


def _field_encoder(field: FieldDescriptor) -> Encoder:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        sub = field.message_type
        return lambda value: _encoder(sub)(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        to_json = _enum_map(field.enum_type).to_json
        return lambda value: to_json.get(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return lambda value: value.decode("latin-1")
    return lambda value: value


def _fields_encoder(desc: Any, skip: str | None = None) -> Callable[[Any, dict[str, Any]], None]:
    steps: list[Callable[[Any, dict[str, Any]], None]] = []
    run: list[str] = []
    for field in desc.fields:
        if skip is not None and field.containing_oneof is not None and field.containing_oneof.name == skip:
            continue
        if _is_plain(field):
            run.append(field.name)
            continue
        if run:
            steps.append(_plain_step(tuple(run)))
            run = []
        steps.append(_field_step(field))
    if run:
        steps.append(_plain_step(tuple(run)))
    if len(steps) == 1:
        return steps[0]

    def write(msg: Any, out: dict[str, Any]) -> None:
        for step in steps:
            step(msg, out)

    return write


def _plain_step(names: tuple[str, ...]) -> Callable[[Any, dict[str, Any]], None]:
    getter = operator.attrgetter(*names)
    if len(names) == 1:
        (only,) = names

        def plain_one(msg: Any, out: dict[str, Any]) -> None:
            out[only] = getter(msg)

        return plain_one

    def plain_run(msg: Any, out: dict[str, Any]) -> None:
        out.update(zip(names, getter(msg), strict=True))

    return plain_run


def _is_plain(field: FieldDescriptor) -> bool:
    return (not field.is_repeated and not field.has_presence and field.message_type is None
            and field.type not in (FieldDescriptor.TYPE_ENUM, FieldDescriptor.TYPE_BYTES)
            and not _opt(field, json_pb2.rest))


def _field_step(field: FieldDescriptor) -> Callable[[Any, dict[str, Any]], None]:
    name = field.name
    nullable = bool(_opt(field, json_pb2.nullable))
    element = _field_encoder(field)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        map_value = _field_encoder(value_field)

        def map_step(msg: Any, out: dict[str, Any]) -> None:
            out[name] = {k: map_value(v) for k, v in getattr(msg, name).items()}

        return map_step
    if field.is_repeated:

        def repeated_step(msg: Any, out: dict[str, Any]) -> None:
            out[name] = [element(v) for v in getattr(msg, name)]

        return repeated_step
    if _opt(field, json_pb2.rest):

        def rest_step(msg: Any, out: dict[str, Any]) -> None:
            if msg.HasField(name):
                for key, value in _struct_to_py(getattr(msg, name)).items():
                    out.setdefault(key, value)

        return rest_step
    if field.has_presence:

        def presence_step(msg: Any, out: dict[str, Any]) -> None:
            if msg.HasField(name):
                out[name] = element(getattr(msg, name))
            elif nullable:
                out[name] = None

        return presence_step
    if field.type == FieldDescriptor.TYPE_ENUM:

        def enum_step(msg: Any, out: dict[str, Any]) -> None:
            value = getattr(msg, name)
            if value:
                out[name] = element(value)
            elif nullable:
                out[name] = None

        return enum_step

    def scalar_step(msg: Any, out: dict[str, Any]) -> None:
        out[name] = element(getattr(msg, name))

    return scalar_step


def _build_encoder(desc: Descriptor) -> Encoder:
    full = desc.full_name
    if full == "google.protobuf.Struct":
        return _struct_to_py
    if full == "google.protobuf.Value":
        return _value_to_py
    if full == "google.protobuf.ListValue":
        return lambda msg: [_value_to_py(v) for v in msg.values]
    if desc.GetOptions().Extensions[json_pb2.json_list]:
        (only,) = desc.fields
        element = _field_encoder(only)
        return lambda msg: [element(v) for v in getattr(msg, only.name)]
    oneof = _union_oneof(desc)
    if oneof is None:
        write = _fields_encoder(desc)

        def encode_plain(msg: Any) -> dict[str, Any]:
            out: dict[str, Any] = {}
            write(msg, out)
            return out

        return encode_plain
    common = _fields_encoder(desc, skip=oneof)
    arms: dict[str, Encoder] = {}
    for field in desc.oneofs_by_name[oneof].fields:
        arms[field.name] = _arm_encoder(field, common)

    def encode_union(msg: Any) -> Any:
        arm = msg.WhichOneof(oneof)
        if arm is None:
            return None
        return arms[arm](msg)

    return encode_union


def _arm_encoder(field: FieldDescriptor, common: Callable[[Any, dict[str, Any]], None]) -> Encoder:
    name = field.name
    tag = _opt(field, json_pb2.type_tag)
    if tag:
        inner = _fields_encoder(field.message_type)

        def encode_tagged(msg: Any) -> dict[str, Any]:
            out: dict[str, Any] = {"type": tag}
            common(msg, out)
            inner(getattr(msg, name), out)
            return out

        return encode_tagged
    element = _field_encoder(field)
    return lambda msg: element(getattr(msg, name))


def _encoder(desc: Any) -> Encoder:
    found = _ref_encoders.get(desc.full_name)
    if found is None:
        found = _ref_encoders[desc.full_name] = _build_encoder(desc)
    return found


def reference_encode(msg: Message) -> Any:
    return _encoder(msg.DESCRIPTOR)(msg)


# ---------------------------------------------------------------- a schema for what the API's protos lack

_EXTRA = "switchboard.test.codec"


def _extra_file() -> descriptor_pb2.FileDescriptorProto:
    """Bytes (singular, optional, repeated), maps of messages and enums, a keyword field name, a recursive type,
    a tagged arm whose fields repeat the outer ones, an enum that is not nullable, and a ``rest`` field."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="switchboard/test/codec_extra.proto", package=_EXTRA, syntax="proto3",
        dependency=["google/protobuf/struct.proto", "switchboard/responses/v1/json.proto"])
    enum = proto.enum_type.add(name="Shade")
    for number, name in enumerate(["SHADE_UNSPECIFIED", "SHADE_LIGHT", "SHADE_DARK"]):
        enum.value.add(name=name, number=number)
    F = descriptor_pb2.FieldDescriptorProto
    one, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED

    def add(msg: Any, name: str, number: int, kind: int, label: int = one, type_name: str = "",
            oneof: int | None = None, optional: bool = False, **options: Any) -> None:
        field = msg.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
        if oneof is not None:
            field.oneof_index = oneof
        if optional:
            field.proto3_optional = True
        for key, value in options.items():
            field.options.Extensions[getattr(json_pb2, key)] = value

    node = proto.message_type.add(name="Node")
    add(node, "name", 1, F.TYPE_STRING)
    add(node, "children", 2, F.TYPE_MESSAGE, rep, f".{_EXTRA}.Node")
    add(node, "parent", 3, F.TYPE_MESSAGE, type_name=f".{_EXTRA}.Node", nullable=True)

    arm = proto.message_type.add(name="Arm")
    add(arm, "id", 1, F.TYPE_STRING)
    add(arm, "type", 2, F.TYPE_STRING)
    add(arm, "shade", 3, F.TYPE_ENUM, type_name=f".{_EXTRA}.Shade")

    odd = proto.message_type.add(name="Odd")
    add(odd, "raw", 1, F.TYPE_BYTES)
    add(odd, "maybe_raw", 2, F.TYPE_BYTES, oneof=1, optional=True, nullable=True)
    add(odd, "raws", 3, F.TYPE_BYTES, rep)
    add(odd, "from", 4, F.TYPE_STRING)
    add(odd, "shade", 5, F.TYPE_ENUM, type_name=f".{_EXTRA}.Shade")
    add(odd, "shades", 6, F.TYPE_ENUM, rep, f".{_EXTRA}.Shade")
    add(odd, "id", 7, F.TYPE_STRING)
    add(odd, "arm", 8, F.TYPE_MESSAGE, type_name=f".{_EXTRA}.Arm", oneof=0, type_tag="arm")
    add(odd, "node", 9, F.TYPE_MESSAGE, type_name=f".{_EXTRA}.Node", oneof=0)
    add(odd, "bare_raw", 10, F.TYPE_BYTES, oneof=0)
    add(odd, "nodes", 11, F.TYPE_MESSAGE, rep, f".{_EXTRA}.Odd.NodesEntry")
    add(odd, "shade_map", 12, F.TYPE_MESSAGE, rep, f".{_EXTRA}.Odd.ShadeMapEntry")
    add(odd, "raw_map", 13, F.TYPE_MESSAGE, rep, f".{_EXTRA}.Odd.RawMapEntry")
    add(odd, "extra", 14, F.TYPE_MESSAGE, type_name=".google.protobuf.Struct", rest=True)
    odd.oneof_decl.add(name="kind")
    odd.oneof_decl.add(name="_maybe_raw")
    for entry_name, kind, type_name in [("NodesEntry", F.TYPE_MESSAGE, f".{_EXTRA}.Node"),
                                        ("ShadeMapEntry", F.TYPE_ENUM, f".{_EXTRA}.Shade"),
                                        ("RawMapEntry", F.TYPE_BYTES, "")]:
        entry = odd.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        add(entry, "key", 1, F.TYPE_STRING)
        add(entry, "value", 2, kind, type_name=type_name)
    return proto


def _extra_types() -> list[Descriptor]:
    pool = descriptor_pool.Default()
    try:
        file = pool.FindFileByName("switchboard/test/codec_extra.proto")
    except KeyError:
        pool.Add(_extra_file())
        file = pool.FindFileByName("switchboard/test/codec_extra.proto")
    return list(file.message_types_by_name.values())


# ---------------------------------------------------------------- filling messages in many ways

_JSON = {"zeta": 1, "type": "free", "id": "dup", "alpha": [1.5, {"b": None, "a": True}, "s"], "big": 2.0**60}


def _fill(msg: Any, seed: int, depth: int = 0) -> None:
    """Sets some of the fields of ``msg`` (which, and to what, depends on ``seed``), nested messages too."""
    desc = msg.DESCRIPTOR
    if desc.full_name == "google.protobuf.Struct":
        msg.update(_JSON)
        return
    if desc.full_name == "google.protobuf.Value":
        msg.struct_value.update(_JSON) if seed % 2 else msg.list_value.extend([1, "two", None, 3.5])
        return
    if desc.full_name == "google.protobuf.ListValue":
        msg.extend([1, "two", {"k": [False]}])
        return
    union = _union_oneof(desc)
    arms = desc.oneofs_by_name[union].fields if union else []
    chosen = arms[seed % len(arms)] if arms else None
    for field in desc.fields:
        if field in arms and field is not chosen:
            continue
        if field.has_presence and field is not chosen and (seed + field.number) % 3 == 0:
            continue
        _set(msg, field, seed + field.number, depth)


def _scalar(field: FieldDescriptor, seed: int) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{seed}-é"
    if kind == FieldDescriptor.TYPE_BYTES:
        return bytes([seed % 256, 0xE9, 0x22])
    if kind == FieldDescriptor.TYPE_BOOL:
        return seed % 2 == 1
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return seed / 4
    if kind == FieldDescriptor.TYPE_ENUM:
        values = field.enum_type.values
        return values[seed % len(values)].number  # sometimes 0, the unset value
    return seed * 7 - 3 if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64) else seed


def _set(msg: Any, field: FieldDescriptor, seed: int, depth: int) -> None:
    name = field.name
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        target = getattr(msg, name)
        for i in range(seed % 3):
            if value_field.message_type is not None:
                if depth < 3:
                    _fill(target[f"k{i}"], seed + i, depth + 1)
            else:
                target[f"k{2 - i}"] = _scalar(value_field, seed + i)
        return
    if field.is_repeated:
        container = getattr(msg, name)
        for i in range(seed % 3):
            if field.message_type is not None:
                if depth < 4:
                    _fill(container.add(), seed + i, depth + 1)
            else:
                container.append(_scalar(field, seed + i))
        return
    if field.message_type is not None:
        if depth < 5 or field.has_presence:
            sub = getattr(msg, name)
            sub.SetInParent()
            if depth < 5:
                _fill(sub, seed, depth + 1)
        return
    setattr(msg, name, _scalar(field, seed))


def _all_types() -> Iterator[Descriptor]:
    modules = [content_pb2, events_pb2, items_pb2, models_service_pb2, response_pb2, responses_service_pb2,
               tools_pb2]

    def walk(desc: Descriptor) -> Iterator[Descriptor]:
        if not desc.GetOptions().map_entry:
            yield desc
        for nested in desc.nested_types:
            yield from walk(nested)

    for module in modules:
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            yield from walk(desc)
    for desc in _extra_types():
        yield from walk(desc)
    yield struct_pb2.Struct.DESCRIPTOR
    yield struct_pb2.Value.DESCRIPTOR
    yield wrappers_pb2.BytesValue.DESCRIPTOR


def _messages(desc: Descriptor) -> Iterator[Message]:
    cls = message_factory.GetMessageClass(desc)
    yield cls()
    union = _union_oneof(desc)
    for seed in range(max(6, 2 * len(desc.oneofs_by_name[union].fields) if union else 0)):
        msg = cls()
        _fill(msg, seed)
        yield msg


TYPES = sorted(_all_types(), key=lambda d: d.full_name)


def _same(msg: Message) -> None:
    expected = orjson.dumps(reference_encode(msg), option=orjson.OPT_NON_STR_KEYS)
    assert orjson.dumps(codec.encode(msg), option=orjson.OPT_NON_STR_KEYS) == expected, msg


@pytest.mark.parametrize("desc", TYPES, ids=[d.full_name for d in TYPES])
def test_every_type_encodes_as_before(desc: Descriptor) -> None:
    for msg in _messages(desc):
        _same(msg)


def test_the_extra_schema_reaches_every_case() -> None:
    odd_type = next(d for d in _extra_types() if d.name == "Odd")
    odd = message_factory.GetMessageClass(odd_type)()
    odd.raw, odd.maybe_raw = b"\xff\x00", b""
    odd.raws.extend([b"a", b"\xe9"])
    setattr(odd, "from", "kw")
    odd.shades.extend([1, 2, 0])
    odd.arm.id, odd.arm.type, odd.arm.shade = "inner", "shadowed", 2
    odd.id = "outer"
    odd.nodes["n"].name = "child"
    odd.nodes["n"].children.add(name="grandchild").parent.name = "up"
    odd.shade_map["s"] = 1
    odd.raw_map["r"] = b"\x80"
    odd.extra.update({"id": "not this one", "new": [1]})
    _same(odd)
    assert list(codec.encode(odd).items()) == [
        ("type", "shadowed"), ("raw", "\xff\x00"), ("maybe_raw", ""), ("raws", ["a", "é"]), ("from", "kw"),
        ("shades", ["light", "dark", None]), ("id", "inner"),
        ("nodes", {"n": {"name": "child", "children": [
            {"name": "grandchild", "children": [], "parent": {"name": "up", "children": [], "parent": None}}],
                         "parent": None}}),
        ("shade_map", {"s": "light"}), ("raw_map", {"r": "\x80"}), ("new", [1]), ("shade", "dark")]
    odd.bare_raw = b"\x01"
    assert codec.encode(odd) == "\x01"
    odd.ClearField("bare_raw")
    assert codec.encode(odd) is None


def test_stream_events_keep_their_bytes() -> None:
    delta = events_pb2.StreamEvent(sequence_number=5, output_text_delta=events_pb2.OutputTextDeltaEvent(
        item_id="msg_abc123", output_index=0, content_index=0, delta="abcd"))
    assert codec.dumps(delta) == (b'{"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_abc123",'
                                  b'"output_index":0,"content_index":0,"delta":"abcd","logprobs":[]}')
    arms = events_pb2.StreamEvent.DESCRIPTOR.oneofs_by_name["event"].fields
    for seed, arm in enumerate(arms):
        event = events_pb2.StreamEvent(sequence_number=seed)
        _fill(getattr(event, arm.name), seed)
        getattr(event, arm.name).SetInParent()
        _same(event)


def test_encoders_are_built_once_per_type() -> None:
    codec.encode(events_pb2.StreamEvent())
    assert codec_encode.encoder(events_pb2.StreamEvent.DESCRIPTOR) is codec_encode.encoder(
        events_pb2.StreamEvent.DESCRIPTOR)
