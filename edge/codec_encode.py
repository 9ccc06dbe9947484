"""Proto -> JSON, the half of the codec (codec.py) that every streamed event goes through.

Each message type is encoded by one function generated from its descriptor, the way ``dataclasses`` builds
``__init__``: the Python source reads the fields in declaration order into one dict display, checks presence
(``HasField``) only where the field has it, and refers to enum maps and to the encoders of nested types as globals
of the function. The source is made only of descriptor names (identifiers, checked) and ``repr`` of option strings,
never of message data. A union is a dict from oneof arm to one such function per arm.

The descriptor helpers both directions need (options, enum maps, Struct/Value, the union oneof) live here too.
"""

from __future__ import annotations

import keyword
import re
import threading
from collections.abc import Callable
from typing import Any

from google.protobuf import message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from switchboard.responses.v1 import json_pb2

Encoder = Callable[[Any], Any]

STRUCT = "google.protobuf.Struct"
VALUE = "google.protobuf.Value"
LIST_VALUE = "google.protobuf.ListValue"


def _opt(field: FieldDescriptor, ext: Any) -> Any:
    return field.GetOptions().Extensions[ext]


def _msg_opt(desc: Descriptor | None, ext: Any) -> Any:
    assert desc is not None
    return desc.GetOptions().Extensions[ext]


def _union_oneof(desc: Descriptor) -> str | None:
    for oneof in desc.oneofs:
        if not (len(oneof.fields) == 1 and oneof.fields[0].has_presence and oneof.name.startswith("_")):
            return oneof.name
    return None


# ---------------------------------------------------------------- enums


class _EnumMap:
    def __init__(self, desc: EnumDescriptor) -> None:
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", desc.name).upper() + "_"
        self.to_json: dict[int, str] = {}
        self.from_json: dict[str, int] = {}
        for value in desc.values:
            if value.number == 0:
                continue
            name = value.GetOptions().Extensions[json_pb2.json_value] or value.name.removeprefix(prefix).lower()
            self.to_json[value.number] = name
            self.from_json[name] = value.number


_enum_maps: dict[str, _EnumMap] = {}


def _enum_map(desc: Any) -> _EnumMap:
    found = _enum_maps.get(desc.full_name)
    if found is None:
        found = _enum_maps[desc.full_name] = _EnumMap(desc)
    return found


# ---------------------------------------------------------------- Struct / Value


_which_kind = struct_pb2.Value.WhichOneof  # the method, called as a function (see ``_Builder._fields``)


def _value_to_py(value: struct_pb2.Value) -> Any:
    kind = _which_kind(value, "kind")
    if kind == "string_value":
        return value.string_value
    if kind == "struct_value":
        return _struct_to_py(value.struct_value)
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "list_value":
        return [_value_to_py(v) for v in value.list_value.values[:]]  # a slice: see ``_Builder._repeated``
    if kind == "bool_value":
        return value.bool_value
    return None


def _struct_to_py(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {key: _value_to_py(value) for key, value in struct.fields.items()}


def _list_value_to_py(msg: struct_pb2.ListValue) -> list[Any]:
    return [_value_to_py(v) for v in msg.values[:]]


_SPECIAL: dict[str, Encoder] = {STRUCT: _struct_to_py, VALUE: _value_to_py, LIST_VALUE: _list_value_to_py}


# ---------------------------------------------------------------- generated encoders

# One step of a generated function: ("set", key, expression) writes a key; ("code", lines) runs statements on
# ``out``. Leading "set" steps form the dict display; the key order is that of the steps.
_Step = tuple[str, Any, Any]


def _attr(var: str, name: str) -> str:
    if not name.isidentifier():
        raise ValueError(f"not a field name: {name!r}")
    return f"getattr({var}, {name!r})" if keyword.iskeyword(name) else f"{var}.{name}"


class _Builder:
    """Builds the encoders of a message type and of every type it reaches, registered together when done."""

    def __init__(self) -> None:
        self.built: dict[str, Encoder] = {}
        self.in_progress: set[str] = set()
        # Globals still to bind to an encoder being built (recursive types): {full name: [(namespace, key)]}.
        self.waiting: dict[str, list[tuple[dict[str, Any], str]]] = {}

    def build(self, desc: Descriptor) -> Encoder:
        full = desc.full_name
        self.in_progress.add(full)
        encoder = self._build(desc)
        self.in_progress.discard(full)
        self.built[full] = encoder
        for namespace, key in self.waiting.pop(full, []):
            namespace[key] = encoder
        return encoder

    def _bind_encoder(self, ns: dict[str, Any], desc: Descriptor) -> str:
        key = f"E{len(ns)}"
        full = desc.full_name
        found = _encoders.get(full) or self.built.get(full)
        if found is not None:
            ns[key] = found
        elif full in self.in_progress:
            ns[key] = None  # bound when that encoder is built
            self.waiting.setdefault(full, []).append((ns, key))
        else:
            ns[key] = self.build(desc)
        return key

    def _build(self, desc: Descriptor) -> Encoder:
        special = _SPECIAL.get(desc.full_name)
        if special is not None:
            return special
        ns: dict[str, Any] = {"_struct_to_py": _struct_to_py}
        if _msg_opt(desc, json_pb2.json_list):
            (only,) = desc.fields
            return _function(f"encode_{desc.name}", ns, [], [], self._repeated(ns, only, _attr("msg", only.name)))
        oneof = _union_oneof(desc)
        if oneof is None:
            return _function(f"encode_{desc.name}", ns, [], self._fields(ns, desc, "msg", None), None)
        common = self._fields(ns, desc, "msg", oneof)
        arms: dict[str | None, Encoder] = {None: _none}
        for field in desc.oneofs_by_name[oneof].fields:
            tag = _opt(field, json_pb2.type_tag)
            if tag:
                steps: list[_Step] = [("set", "type", repr(tag)), *common]
                steps += self._fields(ns, _message_type(field), "sub", None)
                arm = _function(f"encode_{field.name}", ns, [f"sub = {_attr('msg', field.name)}"], steps, None)
            else:
                arm = _function(f"encode_{field.name}", ns, [], [], self._element(ns, field, _attr("msg", field.name)))
            arms[field.name] = arm

        which = message_factory.GetMessageClass(desc).WhichOneof

        def encode_union(msg: Any) -> Any:
            return arms[which(msg, oneof)](msg)

        return encode_union

    def _element(self, ns: dict[str, Any], field: FieldDescriptor, value: str) -> str:
        """The expression of one element of ``field`` whose Python value is the expression ``value``."""
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return f"{self._bind_encoder(ns, _message_type(field))}({value})"
        if field.type == FieldDescriptor.TYPE_ENUM:
            return f"{_bind(ns, 'T', _enum_map(field.enum_type).to_json.get)}({value})"
        if field.type == FieldDescriptor.TYPE_BYTES:
            return f"{value}.decode('latin-1')"
        return value

    def _repeated(self, ns: dict[str, Any], field: FieldDescriptor, value: str) -> str:
        # Iterating a repeated container ends on IndexError (slow, even when empty); its slice is a list.
        element = self._element(ns, field, "v")
        if element == "v":
            items = "x[:]"
        elif element.endswith("(v)"):  # an encoder or an enum map: no comprehension frame
            items = f"list(map({element.removesuffix('(v)')}, x[:]))"
        else:
            items = f"[{element} for v in x[:]]"
        return f"{items} if (x := {value}) else []"

    def _map(self, ns: dict[str, Any], field: FieldDescriptor, value: str) -> str:
        element = self._element(ns, _message_type(field).fields_by_name["value"], "v")
        items = "dict(x.items())" if element == "v" else f"{{k: {element} for k, v in x.items()}}"
        return f"{items} if (x := {value}) else {{}}"

    def _fields(self, ns: dict[str, Any], desc: Descriptor, var: str, skip: str | None) -> list[_Step]:
        """The steps writing the fields of the message in ``var`` (except those of the oneof ``skip``)."""
        steps: list[_Step] = []
        # The class's method, called as a function: ``msg.HasField`` looks the name up among the fields first.
        has = _bind(ns, "H", message_factory.GetMessageClass(desc).HasField)
        for field in desc.fields:
            if skip is not None and field.containing_oneof is not None and field.containing_oneof.name == skip:
                continue
            name = field.name
            value = _attr(var, name)
            nullable = bool(_opt(field, json_pb2.nullable))
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                steps.append(("set", name, self._map(ns, field, value)))
            elif field.is_repeated:
                steps.append(("set", name, self._repeated(ns, field, value)))
            elif _opt(field, json_pb2.rest):
                steps.append(("code", [f"if {has}({var}, {name!r}):",
                                       f"    for k, v in _struct_to_py({value}).items():",
                                       "        out.setdefault(k, v)"], None))
            elif field.has_presence:
                element = self._element(ns, field, value)
                if nullable:
                    steps.append(("set", name, f"{element} if {has}({var}, {name!r}) else None"))
                else:
                    steps.append(("code", [f"if {has}({var}, {name!r}):", f"    out[{name!r}] = {element}"], None))
            elif field.type == FieldDescriptor.TYPE_ENUM:
                # 0 is never in an enum map, so an unset enum maps to None by itself.
                if nullable:
                    steps.append(("set", name, self._element(ns, field, value)))
                else:
                    element = self._element(ns, field, "v")
                    steps.append(("code", [f"if (v := {value}):", f"    out[{name!r}] = {element}"], None))
            else:
                steps.append(("set", name, self._element(ns, field, value)))
        return steps


def _message_type(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None
    return field.message_type


def _bind(ns: dict[str, Any], prefix: str, obj: Any) -> str:
    for key, bound in ns.items():
        if key.startswith(prefix) and bound == obj:
            return key
    key = f"{prefix}{len(ns)}"
    ns[key] = obj
    return key


def _none(msg: Any) -> None:
    return None


def _function(name: str, ns: dict[str, Any], setup: list[str], steps: list[_Step], result: str | None) -> Encoder:
    """Compiles ``def name(msg)`` running ``setup``, then returning ``result`` or the dict that ``steps`` build."""
    body = list(setup)
    if result is not None:
        body.append(f"return {result}")
    else:
        lead = 0
        while lead < len(steps) and steps[lead][0] == "set":
            lead += 1
        display = "{" + ", ".join(f"{key!r}: {expr}" for _, key, expr in steps[:lead]) + "}"
        if lead == len(steps):
            body.append(f"return {display}")
        else:
            body.append(f"out = {display}")
            for kind, key, expr in steps[lead:]:
                body += [f"out[{key!r}] = {expr}"] if kind == "set" else key
            body.append("return out")
    source = f"def {name}(msg):\n" + "".join(f"    {line}\n" for line in body)
    exec(compile(source, f"<codec encoder {name}>", "exec"), ns)  # noqa: S102 - source from descriptors only
    function: Encoder = ns.pop(name)
    return function


_encoders: dict[str, Encoder] = {}
_by_class: dict[type, Encoder] = {}
_lock = threading.Lock()


def encoder(desc: Any) -> Encoder:
    """The encoder of a message type, built on first use."""
    found = _encoders.get(desc.full_name)
    if found is None:
        with _lock:
            found = _encoders.get(desc.full_name)
            if found is None:
                builder = _Builder()
                found = builder.build(desc)
                _encoders.update(builder.built)
    return found


def encode(msg: Message) -> Any:
    """The JSON value (dicts, lists, scalars) of a message."""
    found = _by_class.get(type(msg))
    if found is None:
        found = _by_class[type(msg)] = encoder(msg.DESCRIPTOR)
    return found(msg)
