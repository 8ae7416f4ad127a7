"""The virtual board itself: it must behave like a Pico on USB."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_tools.sim import fleet, vmlaunch

from .conftest import UNIX_VM, Fleet, mpremote

# board/virtual's hardware module, which a board's profile hides (its pins are port_rp2's models)
VHW = pytest.mark.profile(UNIX_VM, why="the unix VM's _vhw module (hidden on a board profile)")


def read_for(fd: int, seconds: float) -> bytes:
    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            out += os.read(fd, 4096)
    return out


def test_start_prints_one_json_line_per_meter(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "host_tools.cli", "sim", "start", "--meters", "2",
                        "--dir", str(tmp_path), "--json"], capture_output=True, text=True,
                       timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        recs = [json.loads(line) for line in r.stdout.splitlines()]
        assert [m["id"] for m in recs] == [0, 1]
        for m in recs:
            assert os.path.realpath(m["port"]).startswith("/dev/pts/")
            assert os.path.realpath(m["han"]).startswith("/dev/pts/")
            assert Path(m["dir"]).is_dir()
            # the port by a path mpremote gives a timeout (it waits for good on /dev/pts/N)
            assert not m["link"].startswith("/dev/pts/")
            assert os.path.realpath(m["link"]) == os.path.realpath(m["port"])
        # a second start on a running fleet is refused, and changes nothing
        r2 = subprocess.run([sys.executable, "-m", "host_tools.cli", "sim", "start", "--meters",
                             "2", "--dir", str(tmp_path)], capture_output=True, text=True,
                            timeout=60)
        assert r2.returncode == 1
        assert "already running" in r2.stderr
        st = subprocess.run([sys.executable, "-m", "host_tools.cli", "sim", "status", "--json",
                             "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert [json.loads(line)["vm"] for line in st.stdout.splitlines()] == ["on", "on"]
    finally:
        r3 = subprocess.run([sys.executable, "-m", "host_tools.cli", "sim", "stop", "--dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert "stopped 2 meter(s)" in r3.stdout
    assert all(s["vm"] == "stopped" for s in fleet.status(tmp_path))


@pytest.mark.profile(UNIX_VM, why="the unix VM's own 192K cap (a board profile's heap: "
                     "test_profiles.py)")
def test_heap_is_capped_like_a_pico(sim: Fleet) -> None:
    r = mpremote(sim.port(2), "exec",
                 "import gc; gc.collect(); print(gc.mem_free() + gc.mem_alloc())")
    assert r.returncode == 0, r.stderr
    assert 150_000 < int(r.stdout.strip()) <= 192 * 1024


@pytest.mark.profile(UNIX_VM, why="the unix VM's host-directory jail (a board profile's flash "
                     "is an image, with no host path to reach)")
def test_filesystem_is_a_jail(sim: Fleet) -> None:
    code = (
        "import os\n"
        "print(os.listdir('/') == os.listdir('/..') == os.listdir('/../../..'))\n"
        "try:\n    open('/../../../../etc/passwd')\n    print('escaped')\n"
        "except OSError:\n    print('contained')\n"
        "print(hasattr(os, 'system'), hasattr(os, 'getenv'))\n"
        "import vfs\nprint(hasattr(vfs, 'VfsPosix'))\n"
        "s = os.statvfs('/')\nprint(s[0] * s[2])\n"
    )
    r = mpremote(sim.port(2), "exec", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "contained", "False", "False", "False",
                                str(1408 * 1024)]


def test_files_survive_power_cut(sim: Fleet) -> None:
    r = mpremote(sim.port(2), "exec", "f = open('keep.txt', 'w'); f.write('kept'); f.close()")
    assert r.returncode == 0, r.stderr
    before = sim.status(2)
    st = fleet.power_cut(2, sim.base)
    assert st["vm"] == "on"
    assert st["power_cuts"] == before["power_cuts"] + 1
    assert st["vm_pid"] != before["vm_pid"]
    r = mpremote(sim.port(2), "exec", "print(open('keep.txt').read())")
    assert r.stdout.strip() == "kept"


def _write_boot_files(port: str) -> None:
    code = ("f = open('boot.py', 'w'); f.write('print(\"boot.py ran\")\\n'); f.close()\n"
            "f = open('main.py', 'w'); f.write('import time\\nprint(\"main.py ran\")\\n"
            "while True:\\n    time.sleep_ms(20)\\n'); f.close()\n")
    r = mpremote(port, "exec", code)
    assert r.returncode == 0, r.stderr


def test_friendly_soft_reset_runs_boot_and_main_and_ctrl_c_stops_main(sim: Fleet) -> None:
    port = sim.port(2)
    _write_boot_files(port)
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"\r\x02")  # friendly REPL
        read_for(fd, 0.3)
        os.write(fd, b"\x04")  # Ctrl-D: soft reset, as on a board
        out = read_for(fd, 1.5)
        assert b"MPY: soft reboot\r\n" in out
        assert b"boot.py ran\r\nmain.py ran\r\n" in out
        assert sim.status(2)["files"]["main.py"] == "running"
        os.write(fd, b"\x03")  # Ctrl-C stops main.py and gives the REPL
        out = read_for(fd, 1.0)
        assert b"KeyboardInterrupt" in out
        assert out.rstrip().endswith(b">>>")
        assert b"rom.py" not in out  # the traceback is the board's, not the ROM's
        assert sim.status(2)["files"]["main.py"] == "ended (KeyboardInterrupt)"
    finally:
        os.close(fd)
        mpremote(port, "fs", "rm", ":boot.py", "+", "fs", "rm", ":main.py")


def test_raw_soft_reset_runs_boot_but_not_main(sim: Fleet) -> None:
    port = sim.port(2)
    _write_boot_files(port)
    try:
        r = mpremote(port, "soft-reset", "+", "exec", "print('after')")
        assert r.returncode == 0, r.stderr
        st = sim.status(2)
        assert st["files"].get("boot.py") == "ended"
        assert "main.py" not in st["files"]
    finally:
        mpremote(port, "fs", "rm", ":boot.py", "+", "fs", "rm", ":main.py")


def test_clients_come_and_go_and_output_without_a_client_is_dropped(sim: Fleet) -> None:
    port = sim.port(2)
    for _ in range(3):
        r = mpremote(port, "eval", "1 + 1")
        assert r.stdout.strip() == "2"
    # Print while nobody listens: a board's USB CDC drops it; the next client
    # must not receive it.
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    os.write(fd, b"\r\x02")
    read_for(fd, 0.2)
    os.write(fd, b"import time\r")
    read_for(fd, 0.2)
    os.write(fd, b"time.sleep_ms(400); print('UNHEARD' + '!')\r")
    os.close(fd)
    time.sleep(0.8)
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    try:
        assert b"UNHEARD!" not in read_for(fd, 0.3)
    finally:
        os.close(fd)


def _wakeups(pid: int) -> int:
    # the times the process went to sleep and was woken: its voluntary context switches
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def test_an_idle_supervisor_sleeps_until_a_client_opens_the_port(sim: Fleet) -> None:
    # An idle meter's supervisor must not wake on a timer to look for a client (it did every
    # 50 ms: 20 times a second for each meter of a fleet, issue 19); a client's open wakes it,
    # so the first bytes are relayed at once, not at the next look.
    port = sim.port(1)
    pid = int(sim.status(1)["pid"])
    for _ in range(3):
        r = mpremote(port, "eval", "1 + 1")
        assert r.stdout.strip() == "2"
    time.sleep(0.5)
    w0 = _wakeups(pid)
    time.sleep(3)
    per_s = (_wakeups(pid) - w0) / 3
    assert per_s < 8, per_s  # the ADC top-up every 500 ms and the VM's own output
    waits = []
    for _ in range(3):
        time.sleep(0.7)  # idle again, the supervisor asleep
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        try:
            t0 = time.monotonic()
            os.write(fd, b"\r")
            ready, _, _ = select.select([fd], [], [], 2.0)
            waits.append(time.monotonic() - t0)
            assert ready, "no answer to a line"
        finally:
            os.close(fd)
    assert max(waits) < 0.25, waits  # a timer of 500 ms would leave one of them waiting


def test_kbd_intr_disabled_passes_ctrl_c_as_data(sim: Fleet) -> None:
    """After micropython.kbd_intr(-1) (a sealed meter), Ctrl-C is a byte for the
    program, not KeyboardInterrupt, and the VM survives it."""
    port = sim.port(2)
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"\r\x03\r\x01")
        read_for(fd, 0.3)
        os.write(fd, b"import micropython, sys\nmicropython.kbd_intr(-1)\n"
                     b"c = sys.stdin.buffer.read(1)\nmicropython.kbd_intr(3)\nprint('got', c)\x04")
        time.sleep(0.3)
        os.write(fd, b"\x03")
        out = read_for(fd, 1.0)
        assert b"got b'\\x03'" in out
    finally:
        os.close(fd)
    assert mpremote(port, "eval", "1").stdout.strip() == "1"


@VHW
def test_input_pins_and_waveform_reach_the_firmware(sim: Fleet) -> None:
    fleet.set_inputs(2, {"button": 1}, sim.base)
    fleet.set_wave(2, {"vrms": 240.0, "irms": 10.0}, sim.base)
    r = mpremote(sim.port(2), "exec",
                 "import _vhw\n_vhw.poll()\nprint(_vhw.inputs['button'], _vhw.wave['irms'])")
    assert r.stdout.split() == ["1", "10.0"]
    fleet.set_inputs(2, {"button": 0}, sim.base)
    r = mpremote(sim.port(2), "exec", "import _vhw\n_vhw.poll()\nprint(_vhw.inputs['button'])")
    assert r.stdout.strip() == "0"
    # the host's settings are the board's hardware: they hold across a power cut
    fleet.power_cut(2, sim.base)
    r = mpremote(sim.port(2), "exec", "import _vhw\n_vhw.poll()\nprint(_vhw.wave['vrms'])")
    assert r.stdout.strip() == "240.0"


@VHW
def test_han_pty_carries_board_output_and_ignores_input(sim: Fleet) -> None:
    st = sim.status(2)
    han = os.open(st["han"], os.O_RDWR | os.O_NOCTTY)
    try:
        time.sleep(0.2)  # let the supervisor see the HAN port opened
        os.write(han, b"/INJECT\r\n")  # a HAN port is a data diode: this goes nowhere
        r = mpremote(sim.port(2), "exec",
                     "import _vhw\n_vhw.han_write(b'/TELEGRAM\\r\\n!ABCD\\r\\n')")
        assert r.returncode == 0, r.stderr
        assert b"/TELEGRAM\r\n!ABCD\r\n" in read_for(han, 0.5)
    finally:
        os.close(han)
    after = sim.status(2)
    assert after["han_ignored_in"] >= st["han_ignored_in"] + len(b"/INJECT\r\n")


@VHW
def test_sim_pin_command(sim: Fleet) -> None:
    def pin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "host_tools.cli", "sim", "pin", "--index",
                               "2", "--dir", str(sim.base), *args], capture_output=True,
                              text=True, timeout=30)

    assert pin("tamper", "1").stdout.strip() == "1"
    r = mpremote(sim.port(2), "exec", "import _vhw\n_vhw.poll()\nprint(_vhw.inputs['tamper'])")
    assert r.stdout.strip() == "1"
    assert pin("tamper").stdout.strip() == "1"
    assert pin("tamper", "0").stdout.strip() == "0"
    bad = pin("relay", "1")  # an output: the firmware drives it, not the host
    assert bad.returncode == 1 and "not an input" in bad.stderr
    assert pin("nonesuch").returncode == 1


@pytest.mark.parametrize("cmd", ["power-cut"])
def test_unknown_meter_is_a_clear_error(sim: Fleet, cmd: str) -> None:
    r = subprocess.run([sys.executable, "-m", "host_tools.cli", "sim", cmd, "--index", "9",
                        "--dir", str(sim.base)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("error: no meter 9")
    # --meter is a meter id everywhere else: the old spelling is refused, naming the new one
    old = subprocess.run([sys.executable, "-m", "host_tools.cli", "sim", cmd, "--meter", "0",
                          "--dir", str(sim.base)], capture_output=True, text=True, timeout=30)
    assert old.returncode == 2 and "--index 0" in old.stderr, old.stderr
    assert sim.status(0)["vm"] == "on"  # nothing was cut


def test_vm_runs_under_the_native_launcher(sim: Fleet) -> None:
    # The per-meter memory target depends on the VM not being hosted by CPython.
    st = sim.status(0)
    exe = os.readlink(f"/proc/{st['vm_pid']}/exe")
    assert Path(exe).name.startswith("mpvm-"), exe
    with open(f"/proc/{st['vm_pid']}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    assert rss_kb < 8000, rss_kb


def test_ctrl_c_is_raised_between_bytecodes_as_on_a_board(real_port: str | None) -> None:
    """The launcher schedules a SIGINT as a board schedules Ctrl-C: the KeyboardInterrupt comes
    at the VM's next check between bytecodes, never from inside C code (the unix port's own
    handler raises it there, and inside the qstr table's lock that left the VM hung)."""
    if real_port:
        pytest.skip("the virtual board's VM launcher")
    site = fleet._site_dir()
    exe, so = vmlaunch.build(site), vmlaunch.extension_path(site)
    code = ("print('go')\n"
            "try:\n"
            " x = sum(range(30000000))\n"  # one long C call: no check between bytecodes
            " print('after the C call')\n"
            " for i in range(1000): pass\n"
            " print('not interrupted')\n"
            "except KeyboardInterrupt:\n"
            " print('interrupted')\n")
    p = subprocess.Popen([str(exe), "0", str(so), "micropython", "-X", "heapsize=64K", "-c",
                          code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "go\n"
        time.sleep(0.05)  # inside the sum by now
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert out == "after the C call\ninterrupted\n", (out, err)
