"""Turn Apache Kafka's JSON message definitions into net/kafka/schemas_data.py.

The codec describes each API once, as data: this script reads the JSON files
(Apache-2.0, copied byte for byte from apache/kafka, see SOURCE.txt beside them),
strips their ``//`` comments and writes one Python module of plain literals that
the codec loads at import time. The output is deterministic: the same input
always gives the same bytes, so a test can rerun the script and compare.

Usage (from the repository root):

    .venv/bin/python scripts/gen_kafka_schemas.py \\
        --messages ../shared/kafka-protocol/messages

Conversions made here, so the codec never has to parse JSON strings:
- version ranges "3+", "0-7", "5", "none" become (3, None), (0, 7), (5, 5), ();
- field names get a snake_case ``key`` ("ThrottleTimeMs" -> "throttle_time_ms");
- defaults become Python values of the field's type (see DEFAULTS_DOC below).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

# The API table of NOTES.md section 5.2, by message name prefix.
APIS = (
    "Produce",
    "Fetch",
    "ListOffsets",
    "Metadata",
    "OffsetCommit",
    "OffsetFetch",
    "FindCoordinator",
    "JoinGroup",
    "Heartbeat",
    "LeaveGroup",
    "SyncGroup",
    "DescribeGroups",
    "ListGroups",
    "SaslHandshake",
    "SaslAuthenticate",
    "ApiVersions",
    "CreateTopics",
    "DeleteTopics",
    "DeleteRecords",
    "InitProducerId",
    "DescribeConfigs",
    "AlterConfigs",
    "IncrementalAlterConfigs",
    "CreatePartitions",
    "DeleteGroups",
    "OffsetDelete",
)
EXTRA_MESSAGES = (
    "RequestHeader",
    "ResponseHeader",
    "ConsumerProtocolSubscription",
    "ConsumerProtocolAssignment",
)

PRIMITIVE_TYPES = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint16",
        "uint32",
        "float64",
        "string",
        "bytes",
        "records",
        "uuid",
    }
)
INTEGER_TYPES = frozenset({"int8", "int16", "int32", "int64", "uint16", "uint32"})
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
LINE_LIMIT = 88

DEFAULTS_DOC = """\
Field "default" values are Python values of the field's type: ints and bools
as such, strings as str (None where the JSON default is "null"), bytes as
bytes or None, uuid as its canonical text, records as None. Arrays have ()
(an empty array) and structs None: a struct's default is built from the
defaults of its own fields."""


class SchemaError(Exception):
    """A JSON definition uses something this script does not understand."""


def strip_comments(text: str) -> str:
    """Drop ``//`` comments; SOURCE.txt guarantees no string contains ``//``."""
    return re.sub(r"//[^\n]*", "", text)


def parse_versions(text: str) -> tuple[int, int | None] | tuple[()]:
    """Parse a version range: "3+" -> (3, None), "0-7" -> (0, 7), "none" -> ()."""
    text = text.strip()
    if text == "none":
        return ()
    if text.endswith("+"):
        return (int(text[:-1]), None)
    if "-" in text:
        low, high = text.split("-", 1)
        return (int(low), int(high))
    return (int(text), int(text))


def snake_case(name: str) -> str:
    """Convert a JSON field name to snake_case: ThrottleTimeMs -> throttle_time_ms."""
    out = []
    for index, char in enumerate(name):
        if char.isupper() and index > 0:
            out.append("_")
        out.append(char.lower())
    return "".join(out)


def convert_default(field_type: str, raw: Any, where: str) -> Any:
    """Return the Python default for a field of ``field_type``."""
    if field_type.startswith("[]"):
        if raw not in (None, ""):
            raise SchemaError(f"{where}: array default {raw!r} is not supported")
        return ()
    if field_type not in PRIMITIVE_TYPES:
        return None
    if field_type in INTEGER_TYPES:
        return 0 if raw is None else int(str(raw), 0)
    if field_type == "bool":
        return False if raw is None else str(raw).lower() == "true"
    if field_type == "float64":
        return 0.0 if raw is None else float(raw)
    if field_type == "string":
        if raw == "null":
            return None
        return "" if raw is None else str(raw)
    if field_type == "bytes":
        if raw == "null":
            return None
        if raw not in (None, ""):
            raise SchemaError(f"{where}: bytes default {raw!r} is not supported")
        return b""
    if field_type == "uuid":
        if raw not in (None, ""):
            raise SchemaError(f"{where}: uuid default {raw!r} is not supported")
        return ZERO_UUID
    if raw not in (None, "null"):
        raise SchemaError(f"{where}: records default {raw!r} is not supported")
    return None


def convert_field(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Convert one JSON field (and its nested fields) into the data layout."""
    name = raw["name"]
    field_type = raw["type"]
    where = f"{where}.{name}"
    element = field_type[2:] if field_type.startswith("[]") else field_type
    is_struct = element not in PRIMITIVE_TYPES
    nested = raw.get("fields", [])
    if is_struct and not nested:
        raise SchemaError(f"{where}: struct type {element} has no inline fields")
    if not is_struct and nested:
        raise SchemaError(f"{where}: primitive type {field_type} has fields")
    if "tag" in raw and "taggedVersions" not in raw:
        raise SchemaError(f"{where}: tag without taggedVersions")

    flexible = raw.get("flexibleVersions")
    return {
        "name": name,
        "key": snake_case(name),
        "type": field_type,
        "versions": parse_versions(raw["versions"]),
        "nullable_versions": parse_versions(raw.get("nullableVersions", "none")),
        "tag": raw.get("tag"),
        "tagged_versions": parse_versions(raw.get("taggedVersions", "none")),
        "flexible_versions": None if flexible is None else parse_versions(flexible),
        "default": convert_default(field_type, raw.get("default"), where),
        "about": " ".join(str(raw.get("about", "")).split()),
        "fields": tuple(convert_field(child, where) for child in nested),
    }


def convert_message(raw: dict[str, Any]) -> dict[str, Any]:
    """Convert one JSON message definition into the data layout."""
    if raw.get("commonStructs"):
        raise SchemaError(f"{raw['name']}: commonStructs are not supported")
    return {
        "name": raw["name"],
        "type": raw["type"],
        "api_key": raw.get("apiKey"),
        "valid_versions": parse_versions(raw["validVersions"]),
        "deprecated_versions": parse_versions(raw.get("deprecatedVersions", "none")),
        "flexible_versions": parse_versions(raw.get("flexibleVersions", "none")),
        "fields": tuple(convert_field(field, raw["name"]) for field in raw["fields"]),
    }


def load_messages(messages_dir: Path) -> dict[str, dict[str, Any]]:
    """Read every message this codec needs, keyed by message name, in table order."""
    names = [f"{api}{kind}" for api in APIS for kind in ("Request", "Response")]
    names.extend(EXTRA_MESSAGES)
    out = {}
    for name in names:
        path = messages_dir / f"{name}.json"
        raw = json.loads(strip_comments(path.read_text(encoding="utf-8")))
        if raw["name"] != name:
            raise SchemaError(f"{path}: declares name {raw['name']!r}")
        out[name] = convert_message(raw)
    return out


def read_commit(source_txt: Path) -> str:
    """Return the apache/kafka commit recorded in SOURCE.txt."""
    match = re.search(
        r"^Commit\s*:\s*([0-9a-f]{40})", source_txt.read_text(), re.MULTILINE
    )
    if match is None:
        raise SchemaError(f"{source_txt}: no 'Commit : <40 hex>' line")
    return match.group(1)


# -- rendering: exploded literals that ruff format leaves as they are ----------


def render_string(text: str) -> str:
    """A string literal in ruff's preferred quotes."""
    if '"' in text and "'" not in text:
        return "'" + text.replace("\\", "\\\\") + "'"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_scalar(value: Any) -> str:
    if isinstance(value, str):
        return render_string(value)
    if isinstance(value, bytes):
        return 'b"' + "".join(f"\\x{b:02x}" for b in value) + '"'
    if isinstance(value, tuple) and all(v is None or isinstance(v, int) for v in value):
        if len(value) == 0:
            return "()"
        return "(" + ", ".join(repr(v) for v in value) + ")"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    raise TypeError(f"cannot render {value!r}")


def render_entry(prefix: str, value: Any, indent: int, out: list[str]) -> None:
    """Append lines for ``<prefix><value>,`` at ``indent`` spaces."""
    pad = " " * indent
    if isinstance(value, dict):
        out.append(f"{pad}{prefix}{{")
        for key, child in value.items():
            render_entry(f"{render_string(key)}: ", child, indent + 4, out)
        out.append(f"{pad}}},")
        return
    if isinstance(value, tuple) and value and isinstance(value[0], dict):
        out.append(f"{pad}{prefix}(")
        for child in value:
            render_entry("", child, indent + 4, out)
        out.append(f"{pad}),")
        return

    line = f"{pad}{prefix}{render_scalar(value)},"
    if len(line) <= LINE_LIMIT or not isinstance(value, str):
        out.append(line)
        return

    # A long text moves into parentheses, split into adjacent literals when it
    # still does not fit (the layout ruff format produces and keeps).
    inner = f"{pad}    {render_string(value)}"
    if len(inner) <= LINE_LIMIT:
        parts = [value]
    else:
        width = LINE_LIMIT - indent - 4 - 3
        parts = textwrap.wrap(value, width=width, drop_whitespace=False)
    out.append(f"{pad}{prefix}(")
    out.extend(f"{pad}    {render_string(part)}" for part in parts)
    out.append(f"{pad}),")


def render_module(messages: dict[str, dict[str, Any]], commit: str) -> str:
    header = f'''\
"""Kafka message schemas for the Ringbus codec, as plain Python data.

Provenance: Apache Kafka message definitions (Apache License 2.0), from
https://github.com/apache/kafka at commit {commit},
clients/src/main/resources/common/message/*.json. This module is derived from
them by scripts/gen_kafka_schemas.py; edit that script and rerun it
(.venv/bin/python scripts/gen_kafka_schemas.py --messages
../shared/kafka-protocol/messages) rather than editing this file.

MESSAGES maps a message name ("ProduceRequest") to a dict with "name", "type"
(request, response, header or data), "api_key" (None for headers and data),
"valid_versions", "deprecated_versions", "flexible_versions" and "fields".
A version range is (low, high) with high None for "and above", or () for none.
Each field is a dict with "name" (as in the JSON), "key" (snake_case, the key
the codec uses in decoded objects), "type" ("int32", "string", "[]Topic", ...),
"versions", "nullable_versions", "tag" (int or None), "tagged_versions",
"flexible_versions" (None: follow the message; (): never compact), "default",
"about" and "fields" (the nested fields of a struct or struct array).

{DEFAULTS_DOC}

Imported by net.kafka.schema only; nothing here is mutated at run time.
"""

from typing import Any

SOURCE_COMMIT = "{commit}"

'''
    lines = ["MESSAGES: dict[str, dict[str, Any]] = {"]
    for name, message in messages.items():
        render_entry(f"{render_string(name)}: ", message, 4, lines)
    lines.append("}")
    return header + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=Path, required=True)
    parser.add_argument(
        "--source", type=Path, help="SOURCE.txt (default: beside --messages)"
    )
    parser.add_argument(
        "--output", type=Path, default=repo / "net" / "kafka" / "schemas_data.py"
    )
    args = parser.parse_args(argv)

    source = args.source or args.messages.parent / "SOURCE.txt"
    try:
        messages = load_messages(args.messages)
        commit = read_commit(source)
    except (OSError, ValueError, KeyError, SchemaError) as exc:
        print(f"gen_kafka_schemas: {exc}", file=sys.stderr)
        return 1

    args.output.write_text(render_module(messages, commit), encoding="utf-8")
    print(f"wrote {len(messages)} messages to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
