"""Compile a message schema into one specialised decode and one encode function
per (message, version): Python source built from the schema, ``exec``-ed once
and cached.

Why compile: a generic interpreter pays for every schema decision (is this
field present, tagged, compact, nullable?) on every field of every request.
The compiled function has those decisions made already: it is straight-line
code with one loop per array, consecutive fixed-width fields (plus the length
prefix of the field after them) read or written by one precompiled ``struct``
call, and bounds checks whose messages name the field. A Produce request then
costs a handful of operations per topic and per partition, and nothing per
record (RECORDS stay a memoryview slice).

Compiled decoder ``decode(buf, pos) -> (obj, pos)``:
    ``buf`` is a 1-D byte memoryview ending where the body ends; ``obj`` is a
    dict keyed by snake_case field keys, holding every field of the schema
    (absent and untransmitted tagged fields take their defaults). RECORDS are
    memoryviews into ``buf`` (no copy), BYTES are ``bytes``, UUIDs are
    ``uuid.UUID``, arrays are lists. Unknown tags are skipped. Raises only
    ``CodecError`` subclasses.

Compiled encoder ``encode(obj, out, chunks) -> out``:
    appends the body to the bytearray ``out`` and returns the bytearray that
    now receives output. A RECORDS value that is a ``FileRange`` (or a large
    buffer) ends the current bytearray: it is appended to ``chunks``, then the
    record data, and a fresh bytearray continues. A field missing from
    ``obj`` is written with its default. Raises ``EncodeError`` for a body that
    does not fit the schema.

Imported by ``net.kafka.codec``; the caches are per process and not
thread-safe (a net process runs one event loop thread).
"""

from __future__ import annotations

import dataclasses
import struct
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple, TypeAlias

from net.kafka.codec_errors import (
    EncodeError,
    InvalidLengthError,
    InvalidValueError,
    TruncatedError,
)
from net.kafka.schema import Field, Message
from net.kafka.wire import (
    FIXED_FORMATS,
    read_uvarint,
    skip_tagged_fields,
    uvarint_bytes,
)


class FileRange(NamedTuple):
    """Record data to be sent from a file: ``length`` bytes at ``position``.

    ``file`` is an open file descriptor or a path; the connection sends the
    range with ``os.sendfile``. The codec never reads it.
    """

    file: int | str
    position: int
    length: int


# One piece of an encoded frame: bytes to write, or a file range to send.
Chunk: TypeAlias = bytearray | bytes | memoryview | FileRange

DecodeFn: TypeAlias = Callable[[memoryview, int], tuple[dict[str, Any], int]]
EncodeFn: TypeAlias = Callable[[dict[str, Any], bytearray, list[Chunk]], bytearray]

# Record data at least this large becomes its own chunk instead of being copied
# into the surrounding bytearray. A guess: below it, one memcpy costs less than
# one more iovec or send call.
INLINE_RECORDS_MAX = 16 * 1024

_NULL_INT16 = b"\xff\xff"
_NULL_INT32 = b"\xff\xff\xff\xff"
_INT16_PACK = struct.Struct(">h").pack
_INT32_PACK = struct.Struct(">i").pack


def _records_part_length(part: Any, where: str) -> int:
    if type(part) is FileRange:
        if part.length < 0 or part.position < 0:
            raise EncodeError(f"{where}: negative position or length in {part!r}")
        return part.length
    if type(part) is memoryview:
        return part.nbytes
    if isinstance(part, bytes | bytearray):
        return len(part)
    raise EncodeError(f"{where}: records part of type {type(part).__name__}")


def put_records(
    value: Any,
    out: bytearray,
    chunks: list[Chunk],
    compact: bool,
    nullable: bool,
    where: str,
) -> bytearray:
    """Write one RECORDS field: its length prefix, then the data.

    ``value`` is None, a bytes-like object, a ``FileRange``, or a list/tuple of
    those pieces sent back to back under one length prefix. Returns the
    bytearray that receives further output.
    """
    # Find the total length for the prefix.
    if value is None:
        if not nullable:
            raise EncodeError(f"{where}: null records in a non-nullable field")
        out += b"\x00" if compact else _NULL_INT32
        return out
    if type(value) is FileRange or not isinstance(value, list | tuple):
        parts: Any = (value,)
    else:
        parts = value
    sizes = [_records_part_length(part, where) for part in parts]
    length = sum(sizes)
    out += uvarint_bytes(length + 1) if compact else _INT32_PACK(length)

    # Small buffers are copied inline; file ranges and big buffers become chunks.
    for part, size in zip(parts, sizes, strict=True):
        if type(part) is FileRange:
            if size == 0:
                continue
        elif size < INLINE_RECORDS_MAX:
            out += part
            continue
        chunks.append(out)
        chunks.append(part)
        out = bytearray()
    return out


def _encode_error(where: str, rule: str) -> EncodeError:
    return EncodeError(f"{where}: {rule}")


_BASE_NAMESPACE: dict[str, Any] = {
    "_uvarint": read_uvarint,
    "_skip_tags": skip_tagged_fields,
    "_uv": uvarint_bytes,
    "_Truncated": TruncatedError,
    "_BadLength": InvalidLengthError,
    "_BadValue": InvalidValueError,
    "_EncodeError": EncodeError,
    "_encode_error": _encode_error,
    "_UUID": uuid.UUID,
    "_unpack_from": struct.unpack_from,
    "_pack": struct.pack,
    "_struct_error": struct.error,
    "_put_records": put_records,
    "_i16": _INT16_PACK,
    "_i32": _INT32_PACK,
    "_NULL16": _NULL_INT16,
    "_NULL32": _NULL_INT32,
}


class _Source:
    """Lines of Python source plus the constants they refer to."""

    def __init__(self, message: Message, version: int) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = dict(_BASE_NAMESPACE)
        self.where = f"{message.name} v{version}"
        self._count = 0
        self._consts: dict[Any, str] = {}

    def emit(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, value: Any, stem: str, key: Any = None) -> str:
        """A namespace name bound to ``value`` (shared for equal ``key``)."""
        cache_key = (stem, key) if key is not None else None
        if cache_key is not None and cache_key in self._consts:
            return self._consts[cache_key]
        name = self.fresh("_" + stem)
        self.namespace[name] = value
        if cache_key is not None:
            self._consts[cache_key] = name
        return name

    def place(self, path: str) -> str:
        """A string literal naming a field for error messages."""
        return repr(f"{self.where} {path}" if path else self.where)

    def unpacker(self, fmt: str) -> str:
        return self.const(struct.Struct(fmt).unpack_from, "unpack", fmt)

    def packer(self, fmt: str) -> str:
        return self.const(struct.Struct(fmt).pack, "pack", fmt)


def _split(
    fields: tuple[Field, ...], version: int, flexible: bool
) -> tuple[list[Field], list[Field]]:
    """Present fields of ``version``: (inline in declaration order, tagged by tag)."""
    present = [f for f in fields if f.present(version)]
    inline = [f for f in present if not f.tagged(version, flexible)]
    tagged = sorted(
        (f for f in present if f.tagged(version, flexible)),
        key=lambda f: f.tag if f.tag is not None else -1,
    )
    return inline, tagged


def _element(field: Field) -> Field:
    """The element of an array field, as a nameless field (never nullable)."""
    return dataclasses.replace(
        field, key="", type=field.element_type, nullable_versions=()
    )


def _min_size(field: Field, version: int, flexible: bool) -> int:
    """The fewest bytes one value of ``field`` (array element type) can take."""
    kind = field.element_type
    if kind in FIXED_FORMATS:
        return struct.calcsize(">" + FIXED_FORMATS[kind])
    if kind == "uuid":
        return 16
    compact = field.compact(version, flexible)
    if kind == "string":
        return 1 if compact else 2
    if kind in ("bytes", "records"):
        return 1 if compact else 4
    inline, _tagged = _split(field.fields, version, flexible)
    total = 1 if flexible else 0
    for child in inline:
        if child.is_array:
            total += 1 if child.compact(version, flexible) else 4
        else:
            total += _min_size(child, version, flexible)
    return total


def _default_literal(src: _Source, field: Field) -> str:
    """Source for a fresh default value of ``field`` (decoded objects own it)."""
    if field.is_array:
        return "[]" if field.default == () else repr(field.default)
    if field.is_struct:
        items = ", ".join(
            f"{child.key!r}: {_default_literal(src, child)}" for child in field.fields
        )
        return "{" + items + "}"
    if field.type == "uuid":
        return src.const(uuid.UUID(field.default), "uuid", field.default)
    return repr(field.default)


def _default_shared(src: _Source, field: Field) -> str:
    """Source for a default value that is only read (encoders)."""
    if field.is_array:
        return "()" if field.default == () else repr(field.default)
    if field.is_struct:
        return src.const(field.default_value(), "default")
    if field.type == "uuid":
        return src.const(uuid.UUID(field.default), "uuid", field.default)
    return repr(field.default)


# -- decoders ---------------------------------------------------------------------


def _decode_fixed(
    src: _Source,
    group: list[Field],
    depth: int,
    path: str,
    out_vars: list[str],
    prefix: tuple[Field, str, str] | None = None,
) -> None:
    """Emit one unpack of a run of fixed-width fields; ``prefix`` (next field,
    its prefix format letter, variable) adds that field's length prefix."""
    fmt = ">" + "".join(FIXED_FORMATS[f.type] for f in group)
    names = "+".join(f.key for f in group)
    if prefix is not None:
        fmt += prefix[1]
        names += "+" + prefix[0].key
        out_vars = [*out_vars, prefix[2]]
    size = struct.calcsize(fmt)
    src.emit(depth, f"if end - pos < {size}:")
    src.emit(
        depth + 1,
        f"raise _Truncated({src.place(path + names)}, pos, {size}, end - pos)",
    )
    targets = ", ".join(out_vars) + ("," if len(out_vars) == 1 else "")
    src.emit(depth, f"{targets} = {src.unpacker(fmt)}(buf, pos)")
    src.emit(depth, f"pos += {size}")


def _prefix_letter(field: Field, version: int, flexible: bool) -> str | None:
    """The struct letter of ``field``'s fixed-width length prefix, if it has one."""
    if field.compact(version, flexible):
        return None
    if field.is_array or field.type in ("bytes", "records"):
        return "i"
    if field.type == "string":
        return "h"
    return None


def _decode_length(
    src: _Source,
    field: Field,
    compact: bool,
    prefix_size: int,
    depth: int,
    path: str,
    read: str | None = None,
) -> str:
    """Emit the read of a length/count prefix; the variable is -1 for null.
    ``read`` names a variable that already holds the prefix."""
    if read is not None:
        return read
    n = src.fresh("n")
    if compact:
        src.emit(depth, f"{n}, pos = _uvarint(buf, pos, end)")
        src.emit(depth, f"{n} -= 1")
        return n
    fmt = ">h" if prefix_size == 2 else ">i"
    src.emit(depth, f"if end - pos < {prefix_size}:")
    src.emit(
        depth + 1,
        f"raise _Truncated({src.place(path + field.key)}, pos, {prefix_size},"
        " end - pos)",
    )
    src.emit(depth, f"{n} = {src.unpacker(fmt)}(buf, pos)[0]")
    src.emit(depth, f"pos += {prefix_size}")
    return n


def _decode_null_branch(
    src: _Source, field: Field, version: int, n: str, var: str, depth: int, path: str
) -> None:
    """Emit ``if n < 0:`` with the null handling; the caller emits ``else:``."""
    place = src.place(path + field.key)
    src.emit(depth, f"if {n} < 0:")
    if field.nullable(version):
        src.emit(depth + 1, f"if {n} != -1:")
        src.emit(depth + 2, f"raise _BadLength({place}, {n}, 'negative length')")
        src.emit(depth + 1, f"{var} = None")
    else:
        src.emit(
            depth + 1,
            f"raise _BadLength({place}, {n}, 'null or negative in a non-nullable"
            " field')",
        )


def _decode_value(
    src: _Source,
    field: Field,
    version: int,
    flexible: bool,
    depth: int,
    path: str,
    read: str | None = None,
) -> str:
    """Emit the decode of one value of ``field``; return the variable holding it.
    ``read`` names a variable holding the already-read length prefix."""
    var = src.fresh(field.key)
    kind = field.type
    place = src.place(path + field.key)

    if field.is_array:
        _decode_array(src, field, version, flexible, depth, path, var, read)
        return var
    if kind in FIXED_FORMATS:
        _decode_fixed(src, [field], depth, path, [var])
        return var
    if kind == "uuid":
        src.emit(depth, "if end - pos < 16:")
        src.emit(depth + 1, f"raise _Truncated({place}, pos, 16, end - pos)")
        src.emit(depth, f"{var} = _UUID(bytes=bytes(buf[pos:pos + 16]))")
        src.emit(depth, "pos += 16")
        return var
    if kind in ("string", "bytes", "records"):
        compact = field.compact(version, flexible)
        n = _decode_length(
            src, field, compact, 2 if kind == "string" else 4, depth, path, read
        )
        _decode_null_branch(src, field, version, n, var, depth, path)
        src.emit(depth, "else:")
        src.emit(depth + 1, f"if end - pos < {n}:")
        src.emit(depth + 2, f"raise _Truncated({place}, pos, {n}, end - pos)")
        if kind == "string":
            src.emit(depth + 1, f"{var} = str(buf[pos:pos + {n}], 'utf-8')")
        elif kind == "bytes":
            src.emit(depth + 1, f"{var} = bytes(buf[pos:pos + {n}])")
        else:
            src.emit(depth + 1, f"{var} = buf[pos:pos + {n}]")
        src.emit(depth + 1, f"pos += {n}")
        return var

    # A struct (non-array) field: its fields follow inline.
    # LIMITATION: nullable struct fields (an INT8 presence marker first) are not
    # compiled; none occur in the message set this codec carries.
    if field.nullable(version):
        raise NotImplementedError(f"{src.where} {path}{field.key}: nullable struct")
    return _decode_struct(
        src, field.fields, version, flexible, depth, path + field.key + "."
    )


def _decode_array(
    src: _Source,
    field: Field,
    version: int,
    flexible: bool,
    depth: int,
    path: str,
    var: str,
    read: str | None,
) -> None:
    element = _element(field)
    place = src.place(path + field.key)
    compact = field.compact(version, flexible)
    n = _decode_length(src, field, compact, 4, depth, path, read)
    _decode_null_branch(src, field, version, n, var, depth, path)
    src.emit(depth, "else:")

    # A count the remaining bytes cannot hold is rejected before any allocation.
    size = max(1, _min_size(element, version, flexible))
    src.emit(depth + 1, f"if {n} > (end - pos) // {size}:")
    src.emit(
        depth + 2,
        f"raise _BadLength({place}, {n}, 'more elements than the frame can hold')",
    )
    if element.type in FIXED_FORMATS:
        letter = FIXED_FORMATS[element.type]
        src.emit(
            depth + 1, f"{var} = list(_unpack_from('>%d{letter}' % {n}, buf, pos))"
        )
        src.emit(depth + 1, f"pos += {n} * {size}")
        return
    src.emit(depth + 1, f"{var} = []")
    src.emit(depth + 1, f"for _ in range({n}):")
    item = _decode_value(
        src, element, version, flexible, depth + 2, path + field.key + "[]"
    )
    src.emit(depth + 2, f"{var}.append({item})")


def _decode_struct(
    src: _Source,
    fields: tuple[Field, ...],
    version: int,
    flexible: bool,
    depth: int,
    path: str,
) -> str:
    """Emit the decode of a struct's fields; return the variable of its dict."""
    inline, tagged = _split(fields, version, flexible)
    values: dict[str, str] = {}

    # Inline fields. A run of fixed-width fields is read by one unpack, which
    # also takes the length prefix of the field after the run when it has one.
    index = 0
    read: str | None = None
    while index < len(inline):
        field = inline[index]
        if field.type in FIXED_FORMATS:
            stop = index
            while stop < len(inline) and inline[stop].type in FIXED_FORMATS:
                stop += 1
            group = inline[index:stop]
            names = [src.fresh(f.key) for f in group]
            letter = None
            if stop < len(inline):
                letter = _prefix_letter(inline[stop], version, flexible)
            if letter is None:
                _decode_fixed(src, group, depth, path, names)
            else:
                read = src.fresh("n")
                _decode_fixed(
                    src, group, depth, path, names, (inline[stop], letter, read)
                )
            values.update(zip((f.key for f in group), names, strict=True))
            index = stop
            continue
        values[field.key] = _decode_value(
            src, field, version, flexible, depth, path, read
        )
        read = None
        index += 1

    if flexible:
        _decode_tags(src, tagged, version, depth, path, values)

    result = src.fresh("s")
    items = ", ".join(
        f"{f.key!r}: {values[f.key] if f.key in values else _default_literal(src, f)}"
        for f in fields
    )
    src.emit(depth, f"{result} = {{{items}}}")
    return result


def _decode_tags(
    src: _Source,
    tagged: list[Field],
    version: int,
    depth: int,
    path: str,
    values: dict[str, str],
) -> None:
    if not tagged:
        src.emit(depth, "pos = _skip_tags(buf, pos, end)")
        return

    for field in tagged:
        var = src.fresh(field.key)
        src.emit(depth, f"{var} = {_default_literal(src, field)}")
        values[field.key] = var

    count, tag, size, saved, start = (
        src.fresh(stem) for stem in ("tags", "tag", "size", "end", "start")
    )
    place = src.place(path + "<tagged fields>")
    src.emit(depth, f"{count}, pos = _uvarint(buf, pos, end)")
    src.emit(depth, f"if {count} > (end - pos) // 2:")
    src.emit(depth + 1, f"raise _BadLength({place}, {count}, 'more tags than bytes')")
    src.emit(depth, f"for _ in range({count}):")
    src.emit(depth + 1, f"{tag}, pos = _uvarint(buf, pos, end)")
    src.emit(depth + 1, f"{size}, pos = _uvarint(buf, pos, end)")
    src.emit(depth + 1, f"if {size} > end - pos:")
    src.emit(depth + 2, f"raise _Truncated({place}, pos, {size}, end - pos)")

    # A known tag is decoded inside a window of exactly its size.
    for index, field in enumerate(tagged):
        keyword = "if" if index == 0 else "elif"
        src.emit(depth + 1, f"{keyword} {tag} == {field.tag}:")
        src.emit(depth + 2, f"{saved} = end")
        src.emit(depth + 2, f"{start} = pos")
        src.emit(depth + 2, f"end = pos + {size}")
        item = _decode_value(src, field, version, True, depth + 2, path)
        src.emit(depth + 2, f"{values[field.key]} = {item}")
        src.emit(depth + 2, f"end = {saved}")
        src.emit(depth + 2, f"pos = {start} + {size}")
    src.emit(depth + 1, "else:")
    src.emit(depth + 2, f"pos += {size}")


def _build_decoder(message: Message, version: int) -> tuple[DecodeFn, str]:
    src = _Source(message, version)
    flexible = message.is_flexible(version)
    src.emit(0, "def decode(buf, pos):")
    src.emit(1, "end = len(buf)")
    src.emit(1, "try:")
    result = _decode_struct(src, message.fields, version, flexible, 2, "")
    src.emit(2, f"return {result}, pos")
    src.emit(1, "except UnicodeDecodeError as exc:")
    src.emit(
        2,
        f"raise _BadValue({src.place('')}, f'string before byte {{pos}} is not"
        " valid UTF-8') from exc",
    )
    src.emit(1, "except (_struct_error, IndexError, ValueError, OverflowError) as exc:")
    src.emit(
        2,
        f"raise _BadValue({src.place('')}, f'cannot decode near byte {{pos}}:"
        " {exc}') from exc",
    )
    return _finish(src, "decode", message, version)


# -- encoders ---------------------------------------------------------------------


def _encode_value(
    src: _Source,
    field: Field,
    version: int,
    flexible: bool,
    depth: int,
    value: str,
    out: str,
    path: str,
) -> None:
    """Emit the encode of the value held in variable ``value`` into ``out``."""
    kind = field.type
    place = src.place(path + field.key)
    compact = field.compact(version, flexible)

    if kind == "records":
        if out != "out":
            raise NotImplementedError(f"{src.where} {path}: records in a tagged field")
        src.emit(
            depth,
            f"out = _put_records({value}, out, chunks, {compact},"
            f" {field.nullable(version)}, {place})",
        )
        return
    if kind in FIXED_FORMATS:
        src.emit(depth, f"{out} += {src.packer('>' + FIXED_FORMATS[kind])}({value})")
        return
    if kind == "uuid":
        src.emit(depth, f"{out} += {value}.bytes")
        return

    # Strings, bytes and arrays share the null handling.
    if kind in ("string", "bytes") or field.is_array:
        src.emit(depth, f"if {value} is None:")
        if field.nullable(version):
            null = (
                "b'\\x00'"
                if compact
                else ("_NULL16" if kind == "string" else "_NULL32")
            )
            src.emit(depth + 1, f"{out} += {null}")
        else:
            src.emit(
                depth + 1,
                f"raise _encode_error({place}, 'null in a non-nullable field')",
            )
        src.emit(depth, "else:")
        depth += 1
    if kind == "string":
        data = src.fresh("utf8")
        src.emit(depth, f"{data} = {value}.encode('utf-8')")
        prefix = f"_uv(len({data}) + 1)" if compact else f"_i16(len({data}))"
        src.emit(depth, f"{out} += {prefix}")
        src.emit(depth, f"{out} += {data}")
        return
    if kind == "bytes":
        prefix = f"_uv(len({value}) + 1)" if compact else f"_i32(len({value}))"
        src.emit(depth, f"{out} += {prefix}")
        src.emit(depth, f"{out} += {value}")
        return
    if field.is_array:
        prefix = f"_uv(len({value}) + 1)" if compact else f"_i32(len({value}))"
        src.emit(depth, f"{out} += {prefix}")
        element = _element(field)
        if element.type in FIXED_FORMATS:
            letter = FIXED_FORMATS[element.type]
            src.emit(depth, f"{out} += _pack('>%d{letter}' % len({value}), *{value})")
            return
        item = src.fresh("item")
        src.emit(depth, f"for {item} in {value}:")
        inner = path + field.key + "[]"
        _encode_value(src, element, version, flexible, depth + 1, item, out, inner)
        return

    # A struct (non-array) field: its fields follow inline.
    if field.nullable(version):
        raise NotImplementedError(f"{src.where} {path}{field.key}: nullable struct")
    if field.key:
        # A struct field given as None means its default; array items must be set.
        src.emit(depth, f"if {value} is None:")
        src.emit(depth + 1, f"{value} = {_default_shared(src, field)}")
    _encode_struct(
        src, field.fields, version, flexible, depth, value, out, path + field.key + "."
    )


def _encode_struct(
    src: _Source,
    fields: tuple[Field, ...],
    version: int,
    flexible: bool,
    depth: int,
    obj: str,
    out: str,
    path: str,
) -> None:
    # LIMITATION: keys of ``obj`` that the version does not carry are ignored,
    # where Kafka's Java writer refuses a non-default, non-ignorable one; a
    # handler that fills a field the client's version lacks is not told.
    inline, tagged = _split(fields, version, flexible)

    # Inline fields, with runs of fixed-width fields written by one pack.
    index = 0
    while index < len(inline):
        field = inline[index]
        if field.type in FIXED_FORMATS:
            stop = index
            while stop < len(inline) and inline[stop].type in FIXED_FORMATS:
                stop += 1
            group = inline[index:stop]
            fmt = ">" + "".join(FIXED_FORMATS[f.type] for f in group)
            args = ", ".join(f"{obj}.get({f.key!r}, {f.default!r})" for f in group)
            src.emit(depth, f"{out} += {src.packer(fmt)}({args})")
            index = stop
            continue
        value = src.fresh(field.key)
        default = _default_shared(src, field)
        src.emit(depth, f"{value} = {obj}.get({field.key!r}, {default})")
        _encode_value(src, field, version, flexible, depth, value, out, path)
        index += 1

    if not flexible:
        return
    if not tagged:
        src.emit(depth, f"{out}.append(0)")
        return

    # Tagged fields are written only when they differ from their default.
    buffer, count = src.fresh("tagbuf"), src.fresh("tagcount")
    src.emit(depth, f"{buffer} = bytearray()")
    src.emit(depth, f"{count} = 0")
    for field in tagged:
        value, sub = src.fresh(field.key), src.fresh("tagged")
        default = _default_shared(src, field)
        src.emit(depth, f"{value} = {obj}.get({field.key!r}, {default})")
        if field.is_array:
            src.emit(depth, f"if {value}:")
        elif default == "None":
            src.emit(depth, f"if {value} is not None:")
        else:
            src.emit(depth, f"if {value} != {default}:")
        src.emit(depth + 1, f"{sub} = bytearray()")
        _encode_value(src, field, version, True, depth + 1, value, sub, path)
        src.emit(depth + 1, f"{buffer} += _uv({field.tag})")
        src.emit(depth + 1, f"{buffer} += _uv(len({sub}))")
        src.emit(depth + 1, f"{buffer} += {sub}")
        src.emit(depth + 1, f"{count} += 1")
    src.emit(depth, f"{out} += _uv({count})")
    src.emit(depth, f"{out} += {buffer}")


def _build_encoder(message: Message, version: int) -> tuple[EncodeFn, str]:
    src = _Source(message, version)
    flexible = message.is_flexible(version)
    src.emit(0, "def encode(obj, out, chunks):")
    src.emit(1, "try:")
    _encode_struct(src, message.fields, version, flexible, 2, "obj", "out", "")
    src.emit(2, "return out")
    src.emit(1, "except _EncodeError:")
    src.emit(2, "raise")
    src.emit(
        1,
        "except (_struct_error, TypeError, AttributeError, ValueError, KeyError)"
        " as exc:",
    )
    src.emit(2, f"raise _EncodeError({src.place('')} + ': ' + repr(exc)) from exc")
    return _finish(src, "encode", message, version)


def _finish(src: _Source, name: str, message: Message, version: int) -> tuple[Any, str]:
    source = "\n".join(src.lines) + "\n"
    code = compile(source, f"<kafka {message.name} v{version} {name}>", "exec")
    exec(code, src.namespace)
    return src.namespace[name], source


_DECODERS: dict[tuple[str, int], DecodeFn] = {}
_ENCODERS: dict[tuple[str, int], EncodeFn] = {}
_SOURCES: dict[tuple[str, int, str], str] = {}


def decoder(message: Message, version: int) -> DecodeFn:
    """The compiled decoder of ``message`` at ``version`` (compiled on first use)."""
    fn = _DECODERS.get((message.name, version))
    if fn is None:
        fn, source = _build_decoder(message, version)
        _DECODERS[message.name, version] = fn
        _SOURCES[message.name, version, "decode"] = source
    return fn


def encoder(message: Message, version: int) -> EncodeFn:
    """The compiled encoder of ``message`` at ``version`` (compiled on first use)."""
    fn = _ENCODERS.get((message.name, version))
    if fn is None:
        fn, source = _build_encoder(message, version)
        _ENCODERS[message.name, version] = fn
        _SOURCES[message.name, version, "encode"] = source
    return fn


def compiled_source(message: Message, version: int, direction: str) -> str:
    """The Python source of a compiled function ("decode" or "encode"), for
    reading and debugging."""
    if direction == "decode":
        decoder(message, version)
    else:
        encoder(message, version)
    return _SOURCES[message.name, version, direction]
