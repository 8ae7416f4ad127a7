"""The firmware on the official builds people own, end to end: three virtual meters on the
rp2-pico profile (a Raspberry Pi Pico with the official RPI_PICO v1.28 firmware: its modules,
its heap as 64-bit objects, no ROMFS, littlefs on a modelled flash chip whose erases stall
the CPU, the board/rp2_pico adapter on models of the rp2 port) and on rp2-pico2 (the Pico 2's
RPI_PICO2 build, board/rp2_pico2). Flashed and provisioned as a user would; then READ, the
ADC sampling by DMA across the flash writes every interval close makes (no gap), a LoPA round
equal to the lab truth, the off-switch cycle with the HAN telegram, and a power cut. The
Pyboard's flows: test_pybv11.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_tools.headend import wire
from host_tools.headend.switch import read_han, status, switch
from host_tools.sim import flashwear, fleet

from .conftest import OwnMeter, own_meters
from .test_lopa_device import (
    INTERVAL_S,
    Fleet3,
    ciphertext,
    lab_truth,
    next_closed_interval,
    set_up,
)

LOAD = {"vrms": 230.0, "irms": 5.0, "pf": 1.0, "export": 0}


@pytest.fixture(scope="module", params=["rp2-pico", "rp2-pico2"])
def board(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          real_port: str | None) -> Iterator[tuple[str, list[OwnMeter]]]:
    if real_port:
        pytest.skip("starts virtual meters of each board profile")
    tmp = tmp_path_factory.mktemp(request.param)
    with own_meters(tmp, 3, wave=LOAD, interval_s=INTERVAL_S, profile=request.param,
                    flash_each=True,
                    timeout=60) as meters:
        yield request.param, meters


def _read(m: OwnMeter) -> dict[str, object]:
    from host_tools.headend.client import open_link

    with open_link(m.port, m.keystore, m.meter_id, timeout=10) as link:
        r: dict[str, object] = link.request(wire.K_READ)
    return r


def test_it_is_the_board_and_reads_true_values(board: tuple[str, list[OwnMeter]]) -> None:
    name, meters = board
    st = fleet.meter_status(0, meters[0].base)
    assert st["profile"] == name
    r = _read(meters[0])
    assert 225 < float(r["vrms"]) < 235 and 4.8 < float(r["irms"]) < 5.2, r  # type: ignore[arg-type]
    assert 1100 < float(r["power_w"]) < 1200, r  # type: ignore[arg-type]


def test_sampling_has_no_gap_across_flash_writes(board: tuple[str, list[OwnMeter]]) -> None:
    # Every interval close saves the energy registers and a profile record: littlefs erases
    # 4 KiB blocks, each stalling the CPU 45 ms (the flash model); the ADC's DMA ring goes on.
    _, meters = board
    m = meters[0]
    before = fleet.status(m.base)[0]["flash"]
    for _ in range(3):
        next_closed_interval()
    after = fleet.status(m.base)[0]["flash"]
    assert after["programs"] > before["programs"]  # the closes did write the flash
    assert after["stall_s"] > before["stall_s"]
    r = _read(m)
    assert r["adc_gap_samples"] == 0, r
    print(f"\n{board[0]}: {flashwear.life_line(after)}")
    assert "flash life at this write rate" in flashwear.life_line(after)


def test_lopa_round_equals_the_lab_truth(board: tuple[str, list[OwnMeter]]) -> None:
    name, meters = board
    f = Fleet3(meters[0].base, [m.port for m in meters], meters[0].keystore,
               [m.meter_id for m in meters])
    for i in range(3):
        f.pks.append(f.raw(i, wire.K_KEYGEN, b"\x00")[:32])
    gid = name.encode()
    set_up(f, gid)
    next_closed_interval()  # the group is in force on all three from the next interval
    t = next_closed_interval()
    cs = [ciphertext(f, i, gid, t) for i in range(3)]
    xs = [lab_truth(p)[0][t] for p in f.ports]  # soft-resets each meter: its RTC runs on
    assert sum(cs) & 0xFFFFFFFF == sum(xs) & 0xFFFFFFFF, (cs, xs)
    assert all(c != x for c, x in zip(cs, xs, strict=True))  # each value blinded
    assert all(x > 0 for x in xs)


def test_off_switch_cycle_han_and_a_power_cut(board: tuple[str, list[OwnMeter]]) -> None:
    from host_tools.headend.client import open_link

    _, meters = board
    m = meters[2]
    with open_link(m.port, m.keystore, m.meter_id, timeout=10) as link:
        assert switch(link, "off").relay == 0
        assert status(link).relay == 0
    time.sleep(2.5)  # a HAN telegram a second; the open relay cut the current
    han = str(fleet.meter_status(2, m.base)["han"])
    tel = read_han(han, 1, timeout=15)[0]  # dsmr-parser, CRC checked
    assert 200 < tel.INSTANTANEOUS_VOLTAGE_L1.value < 260
    assert float(tel.CURRENT_ELECTRICITY_USAGE.value) == 0.0
    clock = int(_read(m)["clock"])  # type: ignore[call-overload]
    fleet.power_cut(2, m.base)
    with open_link(m.port, m.keystore, m.meter_id, timeout=20) as link:
        assert status(link).relay == 0  # the off-switch's record, kept on littlefs
    # No battery on a Pico: the RTC restarts at 2021 and the clock resumes from its last save,
    # never far behind and never from 2021.
    assert int(_read(m)["clock"]) > clock - 600  # type: ignore[call-overload]


def test_the_profiles_heap_and_flash_are_the_boards(board: tuple[str, list[OwnMeter]],
                                                   tmp_path: Path) -> None:
    from host_tools.sim import profiles

    name, meters = board
    st = fleet.status(meters[0].base)[0]
    assert st["heap"] == profiles.vm_start_heap(profiles.get(name))  # the VM's, with headroom
    assert st["flash"]["type"] == "lfs2"
    assert not (meters[0].dir / "romfs.bin").exists()  # the official build has no ROMFS
