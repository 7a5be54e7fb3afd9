"""Which string field of a serialized message is not UTF-8.

protobuf's runtime refuses a message with invalid UTF-8 in a string field as a whole ("Error
parsing message"), naming no field. When a parse fails, this walks the wire format with the
message's descriptor and names the first string field whose bytes do not decode, so the caller
hears ``messages[2].content: is not valid UTF-8`` instead.
"""

from __future__ import annotations

from typing import cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_MAX_NESTING = 32  # no tierwise request nests this deep; deeper bytes are not walked


class _Truncated(Exception):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Truncated
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """The length-delimited fields of one message level, as (number, payload)."""
    out = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        wire_type = key & 7
        if wire_type == _VARINT:
            _, pos = _varint(data, pos)
        elif wire_type == _FIXED64:
            pos += 8
        elif wire_type == _FIXED32:
            pos += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise _Truncated
            out.append((key >> 3, data[pos : pos + length]))
            pos += length
        else:  # groups and invalid wire types: nothing in tierwise.v1 uses them
            raise _Truncated
    return out


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _map_entry(field: FieldDescriptor, payload: bytes, depth: int) -> str | None:
    entry = field.message_type
    assert entry is not None  # a map field's entry type
    key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
    values = dict(_fields(payload))  # the last occurrence wins, as in protobuf
    key = values.get(key_field.number, b"")
    if key_field.type == FieldDescriptor.TYPE_STRING and not _is_utf8(key):
        return f"{field.name} (a key)"
    shown = key.decode("utf-8") if key_field.type == FieldDescriptor.TYPE_STRING else "?"
    name = f"{field.name}[{shown[:32]!r}]"
    value = values.get(value_field.number)
    if value is None:
        return None
    if value_field.type == FieldDescriptor.TYPE_STRING:
        return None if _is_utf8(value) else name
    if value_field.message_type is not None:
        return _walk(value_field.message_type, value, name + ".", depth + 1)
    return None


def _walk(descriptor: Descriptor, data: bytes, prefix: str, depth: int) -> str | None:
    if depth > _MAX_NESTING:
        return None
    seen: dict[int, int] = {}
    for number, payload in _fields(data):
        field = descriptor.fields_by_number.get(number)
        if field is None:
            continue  # unknown fields are kept as bytes, never decoded
        index = seen.get(number, 0)
        seen[number] = index + 1
        nested = field.message_type
        if nested is not None and nested.GetOptions().map_entry:
            found = _map_entry(field, payload, depth)
            if found is not None:
                return prefix + found
            continue
        name = prefix + field.name + (f"[{index}]" if field.is_repeated else "")
        if field.type == FieldDescriptor.TYPE_STRING and not _is_utf8(payload):
            return name
        if nested is not None:
            found = _walk(nested, payload, name + ".", depth + 1)
            if found is not None:
                return found
    return None


def invalid_utf8_field(message: type[Message], data: bytes) -> str | None:
    """The path of the first string field in ``data``, a serialized ``message``, that is not UTF-8
    (``metadata['team']``, ``messages[0].role``); None when there is none or the bytes are not a
    message at all."""
    try:
        return _walk(cast(Descriptor, message.DESCRIPTOR), data, "", 0)
    except _Truncated:
        return None
