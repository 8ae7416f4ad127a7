"""RAM: the firmware boots and runs a 50-member LoPA group under the heap caps of the real
boards: 192 KB (Pico, on the rp2-pico profile: no ROMFS, the code in the heap) and 100 KB
(Pyboard, with a ROMFS partition), each as the 64-bit VM heap that holds what the board's
holds (profiles.vm_heap: the board's figure / 0.68, measured by host_tools/emu/heap32.py).

One virtual meter per cap (its own fleet): flashed, provisioned, its
key pair made on the meter; then a 50-member group, the meter plus 49 members whose key pairs
are made on the host (host_tools/headend/lopa/ref.py, on ``cryptography``), set up over the
authenticated WAN in two GROUP_KEYS chunks; one round's ciphertext from the meter plus the
49 host-side ciphertexts (ref.py's blinding) must sum to the meter's plaintext (lab truth,
read through the REPL) plus the host members' readings. After the lab read the meter
soft-resets: it must boot again with the group loaded from flash, under the same cap.

The meter is flashed as ``meterctl flash`` flashes it: the virtual board has a ROMFS partition,
so the firmware's modules run in place from /rom (mapped read-only outside the heap); two more
tests show that this takes their code out of the heap and that the partition cannot be
written from the VM.

The VM is the unix port for x86-64: its objects and pointers take twice a Cortex-M's bytes
(and its GC blocks are 32 bytes, not 16): the same code and data take 1/0.68 of a board's
heap bytes there (docs/hardware.md, "The same heap on 32-bit objects"). The heap figures the
meter reports (GROUPS: ram_alloc, ram_free) are printed, as 64-bit virtual board figures."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from pathlib import Path

import pytest

from host_tools.flash.deploy import flash
from host_tools.headend import wire
from host_tools.headend.client import MeterError, MeterLink, open_link
from host_tools.headend.keystore import Keystore
from host_tools.headend.lopa import codec, ref
from host_tools.headend.lopa.lab import read_profile
from host_tools.headend.provision import provision
from host_tools.sim import profiles
from tests_device.conftest import mpremote
from tests_device.test_doctor import NEEDS_SIM, Meters, assert_beating, start_fleet

N = 50
GID = b"heap50"
INTERVAL_S = 2
MASK = 0xFFFFFFFF
# A GROUP_KEYS chunk is 24-25 pure-Python X25519s on the VM: seconds, or tens of seconds on a
# loaded host.
LINK_TIMEOUT = 120


def next_closed_interval() -> int:
    """Wait for the next interval boundary (plus margin); return the index just closed."""
    now = time.time()
    boundary = (int(now) // INTERVAL_S + 1) * INTERVAL_S
    time.sleep(boundary - now + 0.7)
    return boundary // INTERVAL_S - 1


def ciphertext(link: MeterLink, t: int) -> int:
    end = time.monotonic() + 5
    while True:
        try:
            tt, c = codec.parse_value(link.request_raw(wire.K_CIPHERTEXT,
                                                       codec.ciphertext_cmd(GID, t)),
                                      "CIPHERTEXT answer")
            assert tt == t
            return c
        except MeterError as e:
            if "no value" not in str(e) or time.monotonic() > end:
                raise
            time.sleep(0.2)


def groups(link: MeterLink) -> dict[str, object]:
    out: dict[str, object] = json.loads(link.request_raw(wire.K_GROUPS, b""))
    return out


def run_50_member_group(tmp: Path, profile: str, heap: str | None = None, n: int = N,
                        board_pools: bool = False) -> None:
    """The whole flow on one meter: flash, provision, KEYGEN, an ``n``-member group (the
    meter and n - 1 members made on the host), a round checked against the lab truth, a
    reboot with the group."""
    # no heap given: a board's profile starts its VM with headroom and leaves the firmware what
    # the board has free at its REPL (profiles.repl_free_bytes)
    m: Meters = start_fleet(tmp / "fleet", 1, heap, profile, board_pools)
    free = profiles.repl_free_bytes(profiles.get(profile)) if heap is None else None
    # ram_alloc counts the ROM's ballast when there is one: ram_free is the firmware's figure
    heap = heap or (f"{profiles.vm_start_heap(profiles.get(profile))} "
                    f"(firmware's at the REPL: {free} B)")
    try:
        port = m.port(0)
        flash(port, timeout=60)
        assert_beating(m, 0)  # boots: main.py runs, the kernel's heartbeat toggles
        ks = Keystore(tmp / "keystore.json")
        me = provision(port, ks, force=True, interval_s=INTERVAL_S, timeout=30).meter_id
        rng = random.Random(50)
        others: dict[int, tuple[bytes, bytes]] = {}  # id -> (sk, pk): the 49 host-side members
        while len(others) < n - 1:
            mid = rng.getrandbits(64)
            if mid != me:
                others[mid] = ref.keypair(rng.randbytes(32))
        with open_link(port, ks, None, timeout=LINK_TIMEOUT) as link:
            my_pk = codec.parse_keygen(link.request_raw(wire.K_KEYGEN,
                                                        codec.keygen_cmd())).pk
            pks = {me: my_pk, **{mid: kp[1] for mid, kp in others.items()}}
            members = sorted(pks.items())
            link.request_raw(wire.K_GROUP_BEGIN, codec.group_begin_cmd(GID, n, 0, 0.0))
            for seq, k in enumerate(range(0, n, codec.CHUNK_MAX)):
                ans = codec.parse_group_keys(link.request_raw(
                    wire.K_GROUP_KEYS,
                    codec.group_keys_cmd(GID, seq, members[k:k + codec.CHUNK_MAX])))
            assert (ans.received, ans.derived) == (n, n - 1)
            commit = codec.parse_group_commit(link.request_raw(wire.K_GROUP_COMMIT,
                                                               codec.group_commit_cmd(GID)))
            assert commit.n == n
            g = groups(link)
            print(f"\n{heap} heap, 64-bit VM, {n}-member group committed: "
                  f"ram_alloc {g['ram_alloc']} B, ram_free {g['ram_free']} B")
            next_closed_interval()  # the group is in force from the next interval on
            t = next_closed_interval()
            c_meter = ciphertext(link, t)
        # The host-side members' ciphertexts for round t, on the reference math.
        xs = {mid: rng.randrange(200, 40_000) for mid in others}
        c_host = 0
        for mid, (sk, _pk) in others.items():
            keys = {j: ref.pair_key(sk, pk, GID, mid, j) for j, pk in pks.items() if j != mid}
            c_host += xs[mid] + ref.blinding(keys, mid, GID, t)
        truth = read_profile(port, timeout=30)  # lab truth; the meter soft-resets after it
        x_meter = truth[(t + 1) * INTERVAL_S]
        assert (c_meter + c_host) & MASK == (x_meter + sum(xs.values())) & MASK
        assert c_meter != x_meter  # what left the meter was blinded
        # It boots again under the same cap, with the 50-member group loaded from flash.
        assert_beating(m, 0)
        with open_link(port, ks, None, timeout=LINK_TIMEOUT) as link:
            g = groups(link)
        assert [(x["gid"], x["n"]) for x in g["groups"]] == [(GID.hex(), n)]  # type: ignore
        print(f"{heap} heap, 64-bit VM, rebooted with the group: "
              f"ram_alloc {g['ram_alloc']} B, ram_free {g['ram_free']} B")
    finally:
        from host_tools.sim import fleet

        fleet.stop(m.base)


def test_boots_and_runs_a_50_member_group_with_the_picos_heap(
        tmp_path: Path, real_port: str | None) -> None:
    # the official RPI_PICO build: its 192 KB heap (as 64-bit objects), no ROMFS (the code in
    # the heap), littlefs on the modelled flash, the rp2 adapter on the port's models
    if real_port:
        pytest.skip(NEEDS_SIM + "; the heap cap is a VM option")
    run_50_member_group(tmp_path, "rp2-pico")


def test_boots_and_runs_a_50_member_group_with_the_pico2s_heap(
        tmp_path: Path, real_port: str | None) -> None:
    # the official RPI_PICO2 build (RP2350): its 448 KB heap (as 64-bit objects), no ROMFS,
    # littlefs on the modelled flash, the rp2_pico2 adapter on the port's models (RP2350
    # registers and DMA)
    if real_port:
        pytest.skip(NEEDS_SIM + "; the heap cap is a VM option")
    run_50_member_group(tmp_path, "rp2-pico2")


def test_boots_and_runs_a_50_member_group_with_the_pyboards_heap(
        tmp_path: Path, real_port: str | None) -> None:
    # the Pyboard's 100 KB heap (as 64-bit objects) with a ROMFS partition: the unix profile
    # at the pybv11 profile's heap (the official PYBV11 build has no ROMFS; its code does not
    # fit its heap and 112 KiB of flash: docs/hardware.md); the qstr pools a board's (the
    # ROM's names are C there: fleet.start board_pools)
    if real_port:
        pytest.skip(NEEDS_SIM + "; the heap cap is a VM option")
    run_50_member_group(tmp_path, "unix", profiles.vm_heap(profiles.get("pybv11")),
                        board_pools=True)


# What importing the firmware (meter.py and every module the boot imports: meter.build()
# imports each task's module just before it makes the task) costs the heap, in a fresh VM
# (mpremote soft-resets into the raw REPL: main.py does not run).
IMPORT_COST = ("import gc, sys\ngc.collect()\na = gc.mem_alloc()\nimport meter\n"
               "from tasks import metrology, offswitch, clock, cs_security, dc_security, comm, "
               "status, credit, han\ngc.collect()\n"
               "print('COST', gc.mem_alloc() - a, meter.__file__)")


def import_cost(port: str) -> tuple[int, str]:
    r = mpremote(port, "exec", IMPORT_COST)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("COST"))
    _, n, where = line.split()
    return int(n), where


def test_romfs_code_runs_in_place_outside_the_heap(tmp_path: Path,
                                                   real_port: str | None) -> None:
    """The same compiled firmware, imported from the filesystem and from the ROMFS partition:
    from /rom its bytecode, strings and names stay in the partition (mapped outside the
    heap, read-only), so the import takes far less heap."""
    if real_port:
        pytest.skip(NEEDS_SIM + "; the ROMFS partition is the launcher's mapping")
    m = start_fleet(tmp_path / "fleet", 1, "192K", "unix")
    try:
        port = m.port(0)
        flash(port, timeout=60, romfs=False)
        assert_beating(m, 0)
        on_fs, where = import_cost(port)
        assert where == "meter.mpy"  # found on the filesystem ('' on sys.path)
        r = flash(port, timeout=60)
        assert r.romfs_bytes > 0
        assert_beating(m, 0)  # the firmware runs from /rom
        in_rom, where = import_cost(port)
        assert where == "/rom/meter.mpy"
        print(f"\n64-bit VM, import of the firmware: {on_fs} B of heap from the filesystem, "
              f"{in_rom} B from ROMFS")
        assert in_rom < 0.7 * on_fs
    finally:
        from host_tools.sim import fleet

        fleet.stop(m.base)


def test_romfs_partition_cannot_be_written_from_the_vm(tmp_path: Path,
                                                       real_port: str | None) -> None:
    """The partition is mapped read-only: a store into it kills the VM (SIGSEGV, as a write to
    a board's XIP flash faults) and the image stays as flashed; /rom is a read-only
    filesystem. Only vfs.rom_ioctl (the flash controller) writes a new image."""
    if real_port:
        pytest.skip(NEEDS_SIM + "; the ROMFS partition is the launcher's mapping")
    m = start_fleet(tmp_path / "fleet", 1, "192K", "unix")
    try:
        port = m.port(0)
        flash(port, timeout=60)
        assert_beating(m, 0)
        part = Path(str(m.status(0)["dir"])) / "romfs.bin"
        before = hashlib.sha256(part.read_bytes()).hexdigest()
        r = mpremote(port, "exec", "try:\n open('/rom/meter.mpy', 'wb')\n"
                                   "except OSError as e:\n print('REFUSED', e)")
        assert "REFUSED" in r.stdout, r.stdout + r.stderr
        crashes = int(m.status(0)["crashes"])  # type: ignore[call-overload]
        try:  # mpremote waits for an end of execution that never comes: the VM is gone
            r = mpremote(port, "exec", "import vfs\nm = vfs.rom_ioctl(2, 0)\nprint('WRITING')\n"
                                       "m[100] ^= 0xFF\nprint('WROTE', m[100])", timeout=15)
            out = r.stdout
        except subprocess.TimeoutExpired as e:
            out = (e.output or b"").decode() if isinstance(e.output, bytes) else str(e.output)
        assert "WRITING" in out and "WROTE" not in out, out
        end = time.monotonic() + 10
        while int(m.status(0)["crashes"]) == crashes:  # type: ignore[call-overload]
            assert time.monotonic() < end, m.status(0)
            time.sleep(0.1)
        log = (Path(str(m.status(0)["dir"])) / "supervisor.log").read_text()
        assert "VM died on signal 11" in log
        assert hashlib.sha256(part.read_bytes()).hexdigest() == before
        assert_beating(m, 0)  # it boots again, from the same image
    finally:
        from host_tools.sim import fleet

        fleet.stop(m.base)


def test_mpremote_romfs_deploy_writes_the_partition(tmp_path: Path,
                                                    real_port: str | None) -> None:
    """`mpremote romfs query` and `mpremote romfs deploy` drive the virtual board's partition
    through vfs.rom_ioctl as they drive a board's: the image lands in the partition, and the
    next boot mounts it at /rom."""
    if real_port:
        pytest.skip(NEEDS_SIM + "; it reads the partition file on the host")
    from host_tools.flash.build import build_image, romfs_image
    from host_tools.sim import fleet

    m = start_fleet(tmp_path / "fleet", 1, "192K", "unix")
    try:
        port = m.port(0)
        img = romfs_image([f for f in build_image("virtual", "x64") if f.dest.endswith(".mpy")])
        (tmp_path / "fw.romfs").write_bytes(img)
        r = mpremote(port, "romfs", "query")
        assert r.returncode == 0 and "ROMFS0 partition has size 262144 bytes" in r.stdout, r
        r = mpremote(port, "romfs", "deploy", str(tmp_path / "fw.romfs"), timeout=120)
        assert r.returncode == 0 and "ROMFS image deployed" in r.stdout, r
        part = Path(str(m.status(0)["dir"])) / "romfs.bin"
        assert part.read_bytes()[:len(img)] == img
        r = mpremote(port, "exec", "import os; print(sorted(os.listdir('/rom/lib')))")
        assert "'wan.mpy'" in r.stdout, r
    finally:
        fleet.stop(m.base)
