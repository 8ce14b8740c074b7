"""Named blocks: header validation, ownership, tracker-free life cycle, clean-up."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from shm.region import (
    SHM_DIR,
    Region,
    RegionError,
    RegionExistsError,
    RegionLayoutError,
    RegionNotFoundError,
    block_name,
    list_blocks,
    unlink_stale,
)
from shm.ring import Ring
from tests.shm.shm_peers import FIELDS
from tests.shm.support import Peers


def _create(name: str, kind: str = "test", version: int = 1) -> Region:
    region = Region.create(name, kind, version, {"rows": 3, "names": ["a"]}, 256)
    region.mark_ready()
    return region


def test_region_attach_sees_schema_and_body_when_created(prefix: str) -> None:
    owner = _create(prefix + "a")
    owner.body[0:4] = b"abcd"

    child = Region.attach(prefix + "a", "test", 1)

    assert child.schema == {"rows": 3, "names": ["a"]}
    assert bytes(child.body[0:4]) == b"abcd"
    assert child.body_offset % 64 == 0
    assert child.owner_pid == os.getpid()
    assert (owner.owner, child.owner) == (True, False)
    child.close()
    owner.close()
    owner.unlink()
    assert list_blocks(prefix) == []


def test_region_attach_raises_not_found_when_missing(prefix: str) -> None:
    with pytest.raises(RegionNotFoundError, match="does not exist"):
        Region.attach(prefix + "missing", "ring", 1)


def test_region_create_raises_exists_when_name_taken(prefix: str) -> None:
    region = _create(prefix + "a")
    with pytest.raises(RegionExistsError, match="unlink_stale"):
        _create(prefix + "a")
    region.close()


def test_region_attach_raises_layout_error_when_kind_differs(prefix: str) -> None:
    region = _create(prefix + "a", kind="table")
    with pytest.raises(RegionLayoutError, match="holds a 'table', expected 'ring'"):
        Region.attach(prefix + "a", "ring", 1)
    region.close()


def test_region_attach_raises_layout_error_when_version_differs(prefix: str) -> None:
    region = _create(prefix + "a", version=2)
    with pytest.raises(RegionLayoutError, match="layout version 2, this code reads"):
        Region.attach(prefix + "a", "test", 1)
    region.close()


def test_region_attach_raises_when_creator_has_not_finished(prefix: str) -> None:
    region = Region.create(prefix + "a", "test", 1, {}, 64)
    with pytest.raises(RegionLayoutError, match="not initialised"):
        Region.attach(prefix + "a", "test", 1)
    region.mark_ready()
    Region.attach(prefix + "a", "test", 1).close()
    region.close()


def test_region_attach_raises_when_block_is_foreign(prefix: str) -> None:
    with open(os.path.join(SHM_DIR, prefix + "junk"), "wb") as junk:
        junk.write(b"NOTOURS!" + bytes(200))
    with pytest.raises(RegionLayoutError, match="not a Ringbus block"):
        Region.attach(prefix + "junk", "test", 1)

    with open(os.path.join(SHM_DIR, prefix + "tiny"), "wb") as tiny:
        tiny.write(b"x" * 10)
    with pytest.raises(RegionLayoutError, match="too small"):
        Region.attach(prefix + "tiny", "test", 1)


def test_region_attach_raises_when_header_sizes_lie(prefix: str) -> None:
    region = _create(prefix + "a")
    struct.pack_into("<q", region.buf, 24, 1 << 40)  # total_bytes
    with pytest.raises(RegionLayoutError, match="header sizes are inconsistent"):
        Region.attach(prefix + "a", "test", 1)
    region.close()


def test_region_close_raises_while_views_alive_then_succeeds(prefix: str) -> None:
    region = _create(prefix + "a")
    view = np.frombuffer(region.body, dtype=np.uint8)

    with pytest.raises(RegionError, match="still alive"):
        region.close()

    del view
    region.close()
    assert region.closed
    region.close()


def test_region_unlink_refused_when_not_owner(prefix: str) -> None:
    region = _create(prefix + "a")
    child = Region.attach(prefix + "a", "test", 1)
    with pytest.raises(RegionError, match="only its creator unlinks"):
        child.unlink()
    child.close()
    region.close()


def test_block_name_rejects_prefix_when_malformed() -> None:
    assert block_name("rb1a2b3c4d5e_", "ring_0") == "rb1a2b3c4d5e_ring_0"
    for bad in ("", "rb", "rb_", "1abc_", "rb1a2b/x_", "rbabc"):
        with pytest.raises(ValueError, match="prefix"):
            block_name(bad, "ring")
    with pytest.raises(ValueError, match="block name"):
        block_name("rbabc_", "a/b")


@pytest.mark.timeout(60)
def test_region_survives_when_attached_child_exits_or_is_killed(
    prefix: str, peers: Peers
) -> None:
    """A child's resource tracker must never unlink the supervisor's block."""
    ring = Ring.create(prefix + "ring", FIELDS, capacity=8, data_bytes=1024)

    # Clean exit of a child that attached: no unlink, no tracker warning.
    child = peers.start("attach-ring", prefix + "ring", "exit")
    child.communicate(timeout=30)
    assert child.returncode == 0
    assert os.path.exists(os.path.join(SHM_DIR, prefix + "ring"))

    # kill -9 of a child that attached, then a new child attaches.
    child = peers.start("attach-ring", prefix + "ring", "hang")
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "attached"
    child.kill()
    _, stderr = child.communicate(timeout=30)
    assert os.path.exists(os.path.join(SHM_DIR, prefix + "ring"))
    assert "resource_tracker" not in stderr

    again = peers.start("attach-ring", prefix + "ring", "exit")
    _, stderr = again.communicate(timeout=30)
    assert again.returncode == 0, stderr
    assert "resource_tracker" not in stderr
    ring.close()


@pytest.mark.timeout(60)
def test_unlink_stale_removes_blocks_when_owner_killed(
    prefix: str, peers: Peers
) -> None:
    live = _create(prefix + "mine")
    owner = peers.start("own-blocks", prefix)
    assert owner.stdout is not None
    assert owner.stdout.readline().strip() == "ready"
    owner.kill()
    owner.wait(timeout=30)
    left = [prefix + "counters", prefix + "ring", prefix + "table"]
    assert list_blocks(prefix) == sorted([*left, prefix + "mine"])

    removed = unlink_stale(prefix)

    assert sorted(removed) == left
    assert list_blocks(prefix) == [prefix + "mine"]
    live.close()


def test_unlink_stale_removes_block_when_header_incomplete(prefix: str) -> None:
    unfinished = Region.create(prefix + "half", "test", 1, {}, 64)
    with open(os.path.join(SHM_DIR, prefix + "junk"), "wb") as junk:
        junk.write(b"\0" * 100)

    assert sorted(unlink_stale(prefix)) == [prefix + "half", prefix + "junk"]
    unfinished.close()
