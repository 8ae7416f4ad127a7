"""The firmware on the pybv11 profile (the official PYBV11 build) with a micro SD card.

Its 112 KiB internal flash cannot hold the firmware (~92 KB of .mpy plus /data), so a Pyboard
boots from a card: ports/stm32/main.c (v1.28.0) mounts it at /sd, makes it the cwd and puts
/sd, /sd/lib before /flash, /flash/lib on sys.path (board/virtual/host/flashdev.py SDCard;
docs/virtual-board.md, "Flash model"). ``meterctl flash`` installs the firmware on the card.

The heap: at the profile's heap (the board's 100 KB; at the REPL the ROM leaves the firmware
what the board has free there, 144 KB as 64-bit objects, profiles.repl_free_bytes) the
firmware of a new meter boots and runs; what it holds then leaves too little for the code of
the rarer requests and of LoPA (docs/hardware.md, "Micro SD card": the figures,
module by module). The rest runs the same card with the heap of an rp2-pico meter (282K), to
show everything else works there, and prints what the firmware holds against the board's
free heap.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import serial

from host_tools.flash.deploy import flash
from host_tools.headend import wire
from host_tools.headend.client import LinkError, MeterError, open_link
from host_tools.headend.keystore import Keystore
from host_tools.headend.provision import provision
from host_tools.headend.switch import read_han, status, switch
from host_tools.sim import flashimg, fleet, profiles, relay
from host_tools.transport.serial import Board

ROOM = "282K"  # an rp2-pico meter's VM heap: room for the rare requests' code and LoPA


def _console_after_reset(port: str, until: bytes, timeout: float = 20.0) -> bytes:
    """What the board prints after a soft reset from the friendly REPL, up to ``until``."""
    out = b""
    with serial.Serial(port, 115200, timeout=0.2) as s:
        s.write(b"\x03\x03\x04")
        end = time.monotonic() + timeout
        while until not in out and time.monotonic() < end:
            out += s.read(4096)
    return out


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    base = tmp_path_factory.mktemp("pybv11") / "fleet"
    port = fleet.start(1, base, profile="pybv11")[0]["port"]
    try:
        yield base, port
    finally:
        fleet.stop(base)


def test_card_mounted_and_booted_from_as_stm32_main_does(card: tuple[Path, str]) -> None:
    base, port = card
    with Board(port, timeout=10) as b:
        b.enter_raw(soft_reset=True)  # nothing flashed yet: the port's own boot
        got = b.eval("(__import__('os').getcwd(), __import__('sys').path, "
                     "[m for _, m in __import__('os').mount()], "
                     "__import__('os').statvfs('/sd')[:3], "
                     "sorted(__import__('os').listdir('/flash')))", "looking at the mounts")
        b.exec("try:\n import cryptolib\n _c = 'imported'\n"
               "except ImportError as e:\n _c = repr(e)\n", "importing cryptolib")
        no_crypto = b.eval("_c", "cryptolib")
        b.soft_reset_to_main()
    cwd, path, mounts, sd_vfs, flash_files = got
    assert cwd == "/sd"
    assert path == ["", ".frozen", "/sd", "/sd/lib", "/flash", "/flash/lib"]
    assert mounts == ["/flash", "/sd"]  # the flash first (main.c), the card after it
    assert sd_vfs[0] * sd_vfs[2] > 31 * 1024 * 1024  # the 32 MiB card, FAT-formatted
    assert flash_files == ["README.txt", "boot.py", "main.py"]  # the factory files
    assert no_crypto.startswith("ImportError"), no_crypto  # the official PYBV11 has none
    mdir = base / "meter-000"
    assert (mdir / "sd.bin").stat().st_size == profiles.SD_BYTES


def test_skipsd_on_the_flash_leaves_the_card_out(card: tuple[Path, str]) -> None:
    _, port = card
    cwd = "__import__('os').getcwd()"
    with Board(port, timeout=10) as b:
        b.enter_raw(soft_reset=True)
        b.exec("open('/flash/SKIPSD', 'w').close()", "writing SKIPSD")
        b.enter_raw(soft_reset=True)  # main.c: a file SKIPSD on the flash, no card mounted
        skipped = b.eval(f"({cwd}, [m for _, m in __import__('os').mount()])", "mounts")
        b.exec("__import__('os').remove('/flash/SKIPSD')", "removing SKIPSD")
        b.enter_raw(soft_reset=True)
        back = b.eval(cwd, "cwd")
        b.soft_reset_to_main()
    assert skipped == ("/flash", ["/flash"]) and back == "/sd"


def _boot_output(port: str, seconds: float) -> bytes:
    """What the board prints in the first ``seconds`` after a soft reset from the REPL."""
    out = b""
    with serial.Serial(port, 115200, timeout=0.2) as s:
        s.write(b"\x03\x03\x02\x04")  # Ctrl-C twice, the friendly REPL, soft reset
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            out += s.read(4096)
    return out[out.find(b"soft reboot"):]


def _qstr_pools(port: str, script: str) -> tuple[int, int]:
    """(n_pool, n_qstr) of micropython.qstr_info() after ``script``, in a fresh VM."""
    from tests_device.conftest import mpremote

    r = mpremote(port, "exec", script + "import micropython\nmicropython.qstr_info()")
    assert r.returncode == 0, r.stderr
    m = re.search(r"n_pool=(\d+), n_qstr=(\d+)", r.stdout)
    assert m, r.stdout
    return int(m.group(1)), int(m.group(2))


def test_the_firmwares_first_name_opens_the_pool_a_boards_would_have_after_1260(
        card: tuple[Path, str]) -> None:
    # On a board the ROM's names are C: the firmware's first 1,260 names fill the 20- to
    # 640-entry pools (py/qstr.c). The virtual board's ROM interns its own ~580 names in the
    # VM's pools: it fills them to the board's 1,260 before its ballast is measured, so that
    # the firmware's first name opens the 1,280-entry pool (~14 KB, at least what a board's
    # first 1,260 names cost) and not a 640-entry one followed by that one (~21 KB).
    _, port = card
    # micropython and qstr_info are the VM's static names: nothing new is interned
    assert _qstr_pools(port, "") == (6, 1260)
    pools, names = _qstr_pools(port, "a_name_of_the_firmwares = 1\n")
    assert (pools, names) == (7, 1261)
    # ... and the ROM's ballast still leaves the firmware the board's free heap at the REPL
    r = mpremote_exec(port, "import gc\ngc.collect()\nprint(gc.mem_free())")
    want = profiles.repl_free_bytes(profiles.get("pybv11"))
    assert want is not None and abs(int(r) - want) <= 3 * 1024, (r, want)


def mpremote_exec(port: str, script: str) -> str:
    from tests_device.conftest import mpremote

    r = mpremote(port, "exec", script)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_flash_installs_on_the_card_and_boots_at_the_boards_heap(
        card: tuple[Path, str]) -> None:
    base, port = card
    mdir = base / "meter-000"
    cmds0, blocks0 = flashimg.sd_writes(mdir)
    assert cmds0 > 0  # the card's format at first boot
    rep = flash(port)
    assert "remounted /sd at / for this session" in rep.notes
    assert rep.written and "/main.py" in rep.written and "/boot.py" in rep.written
    assert flashimg.sd_bytes(mdir) == profiles.SD_BYTES
    assert fleet.exists(mdir, "/main.py") and fleet.exists(mdir, "/.flash-manifest.json")
    cmds, blocks = flashimg.sd_writes(mdir)
    assert blocks - blocks0 >= rep.bytes_sent // 512 and cmds > cmds0  # each write counted
    # the internal flash kept only its factory files
    fleet.stop(base)
    assert set(n for n, _, _ in _flash_listing(mdir)) == {"README.txt", "boot.py", "main.py"}
    port = fleet.start(1, base)[0]["port"]
    # The official build's heap, without the virtual board's own ~48 KB in it (the ROM's
    # ballast leaves the firmware the board's free heap at the REPL, 144,047 B as 64-bit
    # objects): a new meter's firmware boots and runs there (its build's code that is in RAM
    # only for the while, tasks/offswitch_boot.py and tasks/dc_rare.py, fits because
    # meter.py makes those tasks before the rest is imported). What it then holds leaves too
    # little for the code of the rarer requests (docs/hardware.md, "Micro SD card").
    out = _boot_output(port, 8)
    assert b"meter firmware 0.2.0 on board stm32_pybv11" in out, out[-600:]
    assert b"Error" not in out, out[-600:]
    fleet.stop(base)
    # ... and it meters: no task's step or message failed meanwhile (the kernel logs each
    # fault, "task <name> error: ...", in the task's log or the security log: policy.py LOGS;
    # at this heap a MemoryError in metrology's every step once went only there: the stm32
    # ADC model took the firmware's heap, board/virtual/host/port_stm32.py fill())
    faults = _task_faults(mdir)
    assert not faults, faults


def _task_faults(mdir: Path) -> list[bytes]:
    """The kernel's "task <name> error: ..." records in the meter's three logs (policy.py):
    their files, and the battery-backed RAM where the metrology log stages its records
    (policy.NVRAM_RINGS: with it that log has no file of its own)."""
    import re

    logs = flashimg.read_files(mdir, ["/data/log_security.bin", "/data/log_metrology.bin",
                                      "/data/log_offswitch.bin"])
    assert "/data/log_security.bin" in logs, list(logs)
    nvram = mdir / "nvram.bin"
    assert "/data/log_metrology.bin" in logs or nvram.exists(), list(logs)
    if nvram.exists():
        logs["nvram"] = nvram.read_bytes()
    return [m.group(0)[:60] for v in logs.values()
            for m in re.finditer(rb"task \w+ error: [ -~]*", v)]


_HELD = "import gc\ngc.collect()\nprint(gc.mem_alloc())\n"


def _heap_held(port: str) -> int:
    """What the running firmware holds in the VM's heap: gc.mem_alloc() after gc.collect() with
    the firmware stopped where it was (Ctrl-C; main.py's globals keep its kernel and tasks),
    less the same at the REPL after a soft reset, with nothing of it imported. The meter runs
    its firmware again afterwards."""
    with Board(port, timeout=30) as b:
        b.enter_raw(soft_reset=False)
        running = int(b.exec(_HELD, "reading the heap").decode())
        b.exit_raw()
        b.enter_raw(soft_reset=True)
        repl = int(b.exec(_HELD, "reading the heap at the REPL").decode())
        b.soft_reset_to_main()
    time.sleep(1)
    return running - repl


def _against_the_board(what: str, held: int) -> str:
    free = profiles.repl_free_bytes(profiles.get("pybv11"))
    assert free is not None
    r = profiles.OBJECT_RATIO_32_64
    left = free - held
    return (f"pybv11, {what}: the firmware holds {held:,} B of the VM's heap (~{held * r:,.0f} B "
            f"as the board's 32-bit objects) against the {free:,} B (~{free * r:,.0f} B) the "
            f"board has free at its REPL: {'left' if left >= 0 else 'short by'} "
            f"{abs(left):,} B ({abs(left) * 100 / free:.0f} % of it)")


def _reading(link: Any) -> dict[str, Any]:
    """A READ with at least one complete second measured since the meter booted."""
    end = time.monotonic() + 8
    while True:
        r: dict[str, Any] = link.request(wire.K_READ)
        if r["seconds"] >= 1 or time.monotonic() > end:
            return r
        time.sleep(0.3)


def _flash_listing(mdir: Path) -> list[tuple[str, str, int]]:
    prof = (mdir / "profile.json").read_text()
    (mdir / "profile.json").write_text(prof.replace('"sd"', '"no_sd"'))  # read flash.bin
    try:
        return flashimg.listdir(mdir, "/")
    finally:
        (mdir / "profile.json").write_text(prof)


@pytest.fixture(scope="module")
def roomy(card: tuple[Path, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, Keystore]]:
    base, _ = card
    fleet.stop(base)
    port = fleet.start(1, base, heap=ROOM)[0]["port"]
    ks = Keystore(tmp_path_factory.mktemp("ks") / "keystore.json")
    try:
        flash(port)  # already on the card: nothing to transfer
        provision(port, ks, force=True, interval_s=3)
        yield base, port, ks
    finally:
        fleet.stop(base)


def test_firmware_runs_from_the_card(roomy: tuple[Path, str, Keystore]) -> None:
    base, port, ks = roomy
    mdir = base / "meter-000"
    with open_link(port, ks, None, 5.0) as link:
        assert _reading(link)["vrms"] > 200  # the WAN works without cryptolib: lib/aes128.py
        assert switch(link, "off").relay == 0  # open
        st = status(link)
        assert st.ok and st.relay == 0
    rec = relay.offswitch_record(mdir)  # read out of the card's image
    assert rec is not None and rec["relay"] == 0
    tel = read_han(fleet.status(base)[0]["han"], 1, timeout=15)[0]  # dsmr-parser, CRC checked
    assert 200 < tel.INSTANTANEOUS_VOLTAGE_L1.value < 260
    fleet.power_cut(0, base)
    with open_link(port, ks, None, 10.0) as link:
        assert status(link).relay == 0  # kept on the card across the cut
        assert _reading(link)["vrms"] > 200


# What the firmware may hold after a boot, READ, the off-switch, HAN and a power cut (VM bytes,
# its kernel and tasks included: main.py's `running` keeps them at the REPL; measured 7
# December 2026: 140,864 B, 139,104 B once the port models' pins took no heap, and 137,184 B
# (8 December) with the image's line numbers left out (build.OPT_LEVEL), against the 144,047 B
# the board leaves it). Until then the kernel
# was a local of main.py's _boot, which the Ctrl-C freed, and this figure (114,944 B) left out
# the build's objects: the running meter's ~26 KB. A bound on what grows back; the boot at the
# board's heap is the test above, and the whole flow there is the xfail below (docs/hardware.md,
# "Micro SD card")
HELD_MAX = 136 * 1024


def test_the_firmware_heap_against_the_boards(roomy: tuple[Path, str, Keystore],
                                              figure: Callable[[str], None]) -> None:
    _, port, ks = roomy  # after test_firmware_runs_from_the_card: READ, off, HAN, power cut
    with open_link(port, ks, None, 10.0) as link:
        assert _reading(link)["vrms"] > 200
    held = _heap_held(port)
    figure(_against_the_board("booted, READ, off-switch, HAN, power cut", held))
    assert 64 * 1024 < held <= HELD_MAX, held
    with open_link(port, ks, None, 10.0) as link:  # and it runs on
        assert _reading(link)["vrms"] > 200


def test_without_a_card_the_flash_is_the_boot_filesystem(tmp_path: Path) -> None:
    base = tmp_path / "fleet"
    with pytest.raises(fleet.SimError, match="no SD card slot"):
        fleet.start(1, base, profile="rp2-pico", sd_bytes=64 * 1024 * 1024)
    with pytest.raises(fleet.SimError, match="whole number of MiB"):
        fleet.start(1, base, profile="pybv11", sd_bytes=1000)
    assert not base.exists()  # nothing made, nothing started
    port = fleet.start(1, base, profile="pybv11", sd_bytes=0)[0]["port"]
    try:
        with Board(port, timeout=10) as b:
            b.enter_raw(soft_reset=True)
            got = b.eval("(__import__('os').getcwd(), __import__('sys').path, "
                         "[m for _, m in __import__('os').mount()])", "looking at the mounts")
            b.soft_reset_to_main()
    finally:
        fleet.stop(base)
    assert got == ("/flash", ["", ".frozen", "/flash", "/flash/lib"], ["/flash"])
    assert not (base / "meter-000" / "sd.bin").exists()
    assert flashimg.sd_bytes(base / "meter-000") == 0


def test_lopa_round_on_three_pybv11_meters(tmp_path: Path,
                                           figure: Callable[[str], None]) -> None:
    """Key pairs made on three Pyboards (X25519 in MicroPython, AES without cryptolib), a
    group set up, and a round whose aggregate is the lab truth (as test_lopa_device.py)."""
    from .test_lopa_device import Fleet3, ciphertext, lab_truth, next_closed_interval, set_up

    base = tmp_path / "fleet"
    recs = fleet.start(3, base, profile="pybv11", heap=ROOM)
    try:
        ks = Keystore(tmp_path / "keystore.json")
        ids = []
        for r in recs:
            flash(r["port"], timeout=30)
            ids.append(provision(r["port"], ks, force=True, timeout=30, interval_s=2).meter_id)
        f = Fleet3(base, [r["port"] for r in recs], ks, ids)
        for i in range(3):
            f.pks.append(f.raw(i, wire.K_KEYGEN, b"\x00")[:32])
        set_up(f, b"pyb3")
        next_closed_interval()  # the group is in force on all three from the next interval
        t = next_closed_interval()
        cs = [ciphertext(f, i, b"pyb3", t) for i in range(3)]
        held = _heap_held(f.ports[0])  # the group committed, a round's code in RAM
        xs = [lab_truth(p)[0][t] for p in f.ports]
    finally:
        fleet.stop(base)
    assert sum(cs) & 0xFFFFFFFF == sum(xs) & 0xFFFFFFFF, (cs, xs)
    assert all(c != x for c, x in zip(cs, xs, strict=True))  # each value blinded
    figure(_against_the_board("a 3-member group, one round", held))
    assert held > 64 * 1024


# The whole flow at the official build's heap (issue 17): a new meter boots there (above), and
# since the virtual board's ROM stopped pushing the firmware's names into a second qstr pool
# (board/virtual/host/board_identity.py) a provisioned one boots and answers too; the flow then
# stops at LoPA's key pair or its set-up: KEYGEN or GROUP_BEGIN answers "out of memory" (the
# heap is free in pieces too small for the set-up's code). With 12 KB more (VM bytes, ~8 KB as
# the board's 32-bit objects) it passes, with 8 KB it does not: docs/hardware.md, "The whole
# flow at the board's heap". Strict: the day it gets further, this fails and the docs' figures
# are due again.
@pytest.mark.xfail(strict=True, raises=MeterError,
                   reason="LoPA's set-up does not fit the PYBV11 heap (issue 17)")
def test_the_whole_flow_at_the_boards_heap(tmp_path: Path) -> None:
    from .test_heap import run_50_member_group

    try:
        run_50_member_group(tmp_path, "pybv11", None, n=3)
    except MeterError as e:
        if not re.search(r"(KEYGEN|GROUP_BEGIN) refused: FAILED: out of memory", str(e)):
            raise AssertionError(f"the flow stops elsewhere now: {e}") from None
        raise
    except LinkError as e:  # provisioning or a request found no firmware: it stops earlier
        # ... unless the heap ran out before a request was authenticated (its MAC's work): the
        # same limit, met a step sooner, and the meter says so in its security log
        try:
            log = flashimg.read_file(tmp_path / "fleet" / "meter-000", "/data/log_security.bin")
        except (OSError, flashimg.FlashImageError):
            log = b""
        if b"MemoryError" in log:
            raise MeterError(wire.E_FAILED, "out of memory", f"{e}; the meter logged a "
                             "MemoryError: the heap ran out before the request was "
                             "authenticated") from None
        raise AssertionError(f"the flow stops earlier now: {e}") from None


def test_a_bench_clone_takes_the_card(roomy: tuple[Path, str, Keystore]) -> None:
    from host_tools.bench.runner import clone_image

    base = roomy[0]  # flashed and provisioned
    fleet.stop(base)
    src, dest = base / "meter-000", base / "meter-001"
    assert fleet.exists(src, "/data")  # provisioned: keys on the card
    clone_image(src, dest)
    assert flashimg.sd_bytes(dest) == profiles.SD_BYTES
    assert fleet.read_file(dest, "/main.py") == fleet.read_file(src, "/main.py")
    assert not fleet.exists(dest, "/data")  # the meter's own data never copied
    assert flashimg.sd_writes(dest) == (0, 0)
