"""The lab probe's reader of a virtual meter's flash (host_tools/headend/lopa/lab.py
parse_profile): the load profile as the firmware's own ring log (firmware/lib/ringlog.py)
writes it, checked slot by slot as the meter checks it, so a torn slot is never lab truth."""

from __future__ import annotations

import struct
from pathlib import Path

from ringlog import Ring

from host_tools.headend.lopa.lab import PROFILE_CAP, PROFILE_REC, parse_profile


def _profile(path: Path, n: int) -> dict[int, int]:
    ring = Ring(str(path), PROFILE_CAP, PROFILE_REC)
    want = {}
    for k in range(n):
        t_end, mwh = 1_800_000_000 + 900 * k, 1000 * k + 7
        ring.append(struct.pack(">IIIII", t_end, mwh, 0, mwh // 1000, 0))
        want[t_end] = mwh
    return want


def test_the_flash_reader_reads_what_the_firmware_ring_holds(tmp_path: Path) -> None:
    p = tmp_path / "profile.bin"
    want = _profile(p, 5)
    assert parse_profile(p.read_bytes()) == want
    # the firmware's own reader agrees
    ring = Ring(str(p), PROFILE_CAP, PROFILE_REC)
    assert {struct.unpack(">II", r[:8])[0]: struct.unpack(">II", r[:8])[1]
            for _s, r in ring.records()} == want


def test_a_wrapped_ring_keeps_only_its_window(tmp_path: Path) -> None:
    p = tmp_path / "profile.bin"
    want = _profile(p, PROFILE_CAP + 10)
    got = parse_profile(p.read_bytes())
    assert len(got) == PROFILE_CAP
    assert got == dict(list(want.items())[-PROFILE_CAP:])


def test_a_torn_or_misplaced_slot_is_not_lab_truth(tmp_path: Path) -> None:
    p = tmp_path / "profile.bin"
    want = _profile(p, 4)
    data = bytearray(p.read_bytes())
    data[PROFILE_REC * 1 + 10] ^= 0x01  # a bit of record 2's payload: its checksum fails
    got = parse_profile(bytes(data))
    assert got == {t: x for i, (t, x) in enumerate(want.items()) if i != 1}
    moved = bytearray(p.read_bytes())
    moved[PROFILE_REC * 3:PROFILE_REC * 4] = moved[0:PROFILE_REC]  # record 1 in slot 4
    assert len(parse_profile(bytes(moved))) == 3
