# Board adapter of the emulated boards (QEMU), for the whole meter's C6 run
# (host_tools/emu/c6.py): deployed to the RAM filesystem as /board.py, beside the firmware
# (firmware/*.py and lib/, compiled for the board), with the surface board/virtual describes.
# What it models and what that costs is said in docs/emulated.md, "C6".
#
# Time: QEMU runs with -icount shift=3 here, 8 ns of virtual time per instruction, so the
# port's time.ticks_us() counts microseconds of a 125 MHz core at one instruction per cycle.
# The idle wait is the port's time.sleep_ms (a busy wait in C that the kernel counts as sleep:
# kernel.py measures busy time as the window less its sleep_ms calls).
import os
import time
from array import array
from micropython import const

import emu

NAME = "emulated_" + ("m0plus" if "M0" in emu.BOARD else "qemu")
ADC_RATE_HZ = const(2000)  # per channel: host_tools/emu/c6.py puts board/rp2_pico's here
# rp2_pico's analogue front end: full scale (peak) 400 V and 100 A from mid-scale
CAL_DEFAULT = (400.0 * 16 / 32767, 100.0 * 16 / 32767, 0.0)

ticks_us = time.ticks_us
ticks_diff = time.ticks_diff
sleep_ms = time.sleep_ms


class _Pin:
    # an output (relay, LED) or an input that reads v for ever (nothing is wired)
    def __init__(self, v=0):
        self._v = v

    def value(self, v=None):
        if v is None:
            return self._v
        self._v = 1 if v else 0
        return None

    def on(self):
        self._v = 1

    def off(self):
        self._v = 0

    def toggle(self):
        self._v ^= 1


# The ADC ring, as the Pico's DMA fills it: a 50 Hz voltage and current (230 V rms, 10 A rms,
# 30 degrees behind) sampled at ADC_RATE_HZ, precomputed once (PERIODS whole mains cycles),
# with a tail of READ_MAX samples more so that any read is one slice. read_into() hands out the
# samples due since the last call (elapsed time x rate), copied with one memoryview slice per
# channel: the hardware's work (the DMA's), measured here (cost_us) so that it can be told
# apart from the meter's.
PERIODS = const(10)
READ_MAX = const(1024)  # tasks/metrology.py BUF


class _Adc:
    RATE_HZ = ADC_RATE_HZ

    def __init__(self, rate=ADC_RATE_HZ):
        import math

        self.rate = rate
        self._per = per = rate * PERIODS // 50
        n = per + READ_MAX
        v = array("H", bytes(2 * n))
        i = array("H", bytes(2 * n))
        w = 2 * math.pi * 50 / rate
        vpk = 230 * 1.41421356 / 400 * 32767
        ipk = 10 * 1.41421356 / 100 * 32767
        for k in range(n):
            v[k] = (32768 + int(vpk * math.sin(w * k))) & 0xFFF0
            i[k] = (32768 + int(ipk * math.sin(w * k - 0.5235988))) & 0xFFF0
        self._v = memoryview(v)
        self._i = memoryview(i)
        self._next = 0  # samples handed out
        self._due_us = 0  # elapsed time in us x rate, as a sample count's numerator
        self._last = time.ticks_us()
        self.gaps = self.dropped = self.last_gap = 0
        self.cost_us = 0  # time spent in read_into: the DMA's work on a Pico

    def read_into(self, v_buf, i_buf):
        t0 = time.ticks_us()
        self._due_us += time.ticks_diff(t0, self._last) * self.rate
        self._last = t0
        due = self._due_us // 1000000
        n = due - self._next
        self.last_gap = 0
        cap = min(len(v_buf), READ_MAX)
        if n > cap:  # later than the ring: the oldest are lost, as on a Pico
            self.last_gap = n - cap
            self.gaps += 1
            self.dropped += self.last_gap
            self._next = due - cap
            n = cap
        if n > 0:
            p = self._next % self._per
            memoryview(v_buf)[0:n] = self._v[p:p + n]
            memoryview(i_buf)[0:n] = self._i[p:p + n]
            self._next += n
        else:
            n = 0
        self.cost_us += time.ticks_diff(time.ticks_us(), t0)
        return n


class _HanTx:
    # transmit-only, into nothing: counts what the HAN would carry
    def __init__(self):
        self.bytes = 0
        self.writes = 0

    def write(self, data):
        self.bytes += len(data)
        self.writes += 1
        return len(data)


class _Rtc:
    # Unix time in whole seconds: a start time (the host's) plus the board's own elapsed time
    def __init__(self, t0):
        self._base = t0
        self._ms = 0
        self._last = time.ticks_ms()

    def get(self):
        now = time.ticks_ms()
        self._ms += time.ticks_diff(now, self._last)
        self._last = now
        return self._base + self._ms // 1000

    def set(self, t):
        self.get()
        self._base = int(t) - self._ms // 1000


class _Wan:
    # A scripted head-end: lines (authenticated frames the host made, host_tools/emu/c6.py) in
    # the file /c6_wan.txt, each due at an RTC second: "<due> <line>\n". The answers' bytes
    # are kept (the first KEEP: comm writes a frame in several pieces, its escapes apart) for
    # the host to check; nothing else is read.
    KEEP = const(1024)

    def __init__(self, rtc):
        self._rtc = rtc
        self._script = []
        try:
            with open("/c6_wan.txt", "rb") as f:
                for ln in f.read().split(b"\n"):
                    if ln:
                        due, line = ln.split(b" ", 1)
                        self._script.append((int(due), line + b"\n"))
        except OSError:
            pass
        self._cur = None
        self._pos = 0
        self.out = bytearray(self.KEEP)
        self.kept = 0
        self.bytes_in = self.bytes_out = 0
        # what the kernel's idle wait polls (select.py here, sys.stdin on a Pico), so that comm
        # rests until a line is due
        self.pollable = self

    def ready_ms(self):
        # ms until input is there (0: now; None: no more)
        if self._cur is not None:
            return 0
        if not self._script:
            return None
        r = self._rtc
        r.get()
        left = (self._script[0][0] - r._base) * 1000 - r._ms
        return left if left > 0 else 0

    def readinto(self, buf):
        cur = self._cur
        if cur is None:
            if not self._script or self._rtc.get() < self._script[0][0]:
                return 0
            cur = self._cur = self._script.pop(0)[1]
            self._pos = 0
        n = min(len(buf), len(cur) - self._pos)
        buf[0:n] = cur[self._pos:self._pos + n]
        self._pos += n
        if self._pos >= len(cur):
            self._cur = None
        self.bytes_in += n
        return n

    def write(self, data):
        self.bytes_out += len(data)
        n = min(len(data), self.KEEP - self.kept)
        if n > 0:
            self.out[self.kept:self.kept + n] = memoryview(data)[:n]
            self.kept += n


led = _Pin()
relay = _Pin(1)
button = _Pin()
tamper = _Pin()
cover = _Pin()
jumper = _Pin()
adc = _Adc()
_T0 = 1767225600  # 2026-01-01 00:00:00 UTC; the C6 driver sets the host's
rtc = _Rtc(_T0)
_han = _HanTx()
_wan = None


def han_tx():
    return _han


def wan():
    global _wan
    if _wan is None:
        _wan = _Wan(rtc)
    return _wan


def rtc_get():
    return rtc.get()


def rtc_set(t):
    rtc.set(t)


def entropy(n):
    # the port's os.urandom: deterministic on the emulated boards (for timing only)
    return os.urandom(n)
