"""The virtual board's battery-backed RAM (board.nvram): what the firmware writes there
survives a power cut (SIGKILL), and the clock keeps its last time there, not on flash."""

from __future__ import annotations

import json
import os
import struct
import time

import pytest

from host_tools.flash.deploy import flash
from host_tools.sim import fleet

from .conftest import UNIX_VM, Fleet, mpremote

pytestmark = pytest.mark.profile(UNIX_VM, why="board/virtual's battery-backed RAM: a Pico has "
                                 "none, and the unix VM's board package models it")
OFF = 4040  # past the firmware's windows (policy.NVRAM, NVRAM_RINGS: up to 3544)


@pytest.fixture
def flashed(sim: Fleet) -> str:
    flash(sim.port(1))
    return sim.port(1)


def test_nvram_survives_a_power_cut_and_refuses_out_of_range(sim: Fleet, flashed: str) -> None:
    token = os.urandom(8).hex()
    r = mpremote(flashed, "exec",
                 "import board\n"
                 f"board.nvram.write({OFF}, b'{token}')\n"
                 "try:\n"
                 "    board.nvram.write(4090, b'1234567')\n"
                 "except ValueError as e:\n"
                 "    print('refused', e)\n"
                 f"print(board.nvram.size, board.nvram.read({OFF}, 16).decode())\n")
    lines = r.stdout.split("\n")
    assert lines[0].startswith("refused") and lines[1].split() == ["4096", token], r.stdout
    fleet.power_cut(1, sim.base)
    r = mpremote(flashed, "exec", f"import board\nprint(board.nvram.read({OFF}, 16).decode())")
    assert r.stdout.strip() == token
    raw = (fleet.meter_dir(sim.base, 1) / "nvram.bin").read_bytes()
    assert len(raw) == 4096 and raw[OFF:OFF + 16] == token.encode()
    assert raw[4090:4096] == bytes(6)  # the refused write changed nothing


def test_the_running_clock_keeps_its_time_in_nvram(sim: Fleet, flashed: str) -> None:
    # the meter runs (main.py after the flash): its clock's window (policy.NVRAM "clock":
    # 0..64, two 32-byte slots of lib/nvrec.py) holds a record of the last second
    time.sleep(3)
    raw = (fleet.meter_dir(sim.base, 1) / "nvram.bin").read_bytes()
    recs = []
    for slot in (0, 32):
        tag, seq, n = raw[slot:slot + 2], *struct.unpack_from("<IH", raw, slot + 2)
        if tag == b"CK" and n == 4:
            recs.append((seq, struct.unpack_from("<I", raw, slot + 8)[0]))
    assert recs, raw[:64].hex()
    t = max(recs)[1]
    hw_file = fleet.meter_dir(sim.base, 1) / "hw.json"  # written once the host set anything
    hw = json.loads(hw_file.read_text()) if hw_file.exists() else {}
    assert abs(t - (time.time() + hw.get("rtc_offset", 0))) < 5  # the board's RTC, now
    # flushed once at boot, not every second: the RAM's snapshot (lib/nvrec.py Snapshots, the
    # clock's record in it), one file of policy.NVRAM_SNAPSHOTS, not a clock.json of its own
    data = fleet.meter_dir(sim.base, 1) / "fs" / "data"
    snaps = sorted(data.glob("nvram.*"))
    # one a boot (the clock's daily flush; this meter has booted at each flash and cut)
    assert snaps, sorted(os.listdir(data))
    assert all(p.stat().st_size == 11 + 4096 + 8 for p in snaps)
    assert not (data / "clock.json").exists()
    before = [p.stat().st_mtime for p in snaps]
    time.sleep(2.5)
    assert [p.stat().st_mtime for p in snaps] == before
    assert sorted(data.glob("nvram.*")) == snaps
