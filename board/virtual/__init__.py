# Board adapter: the virtual board (MicroPython unix VM under a supervisor).
#
# Deployed to the meter as the package `board`. Every board adapter offers the
# same small surface, and the firmware reaches the hardware only through it:
#   NAME, ADC_RATE_HZ
#   led, relay           output pins: value([v]), on(), off(), toggle()
#   button, tamper       input pins: value()
#   cover, jumper        input pins: the terminal cover's switch (1: open) and the service
#                        jumper (1: fitted), read at power-up to unseal (firmware/meter.py)
#   adc                  read_into(v_buf, i_buf) -> n new samples per channel
#   han_tx()             transmit-only UART for the HAN (write() only)
#   rtc_get()/rtc_set(t) Unix time, whole seconds since 1970-01-01 UTC
#   entropy(n)           n random bytes from the board's entropy source
#   wan()                the WAN link: readinto(buf) (non-blocking), write(data)
#   ticks_us()/ticks_diff(a, b), sleep_ms(ms)
#   nvram                None, or battery-backed RAM: size, read(off, n), write(off, data)
# Here the surface is backed by the built-in module `_vhw`, which the
# virtual board's ROM (board/virtual/host/rom.py) wires to the supervisor.
import time
from micropython import const

import _thread
import _vhw

NAME = "virtual"
ADC_RATE_HZ = const(4000)  # per channel (the supervisor's ADC_RATE; docs/hardware.md "Sample rate")
# Metrology calibration (metro.Accumulator): volts and amps per 12-bit count
# (u16 sample >> 4), phase in sample periods. The front end (board/virtual/host/waveform.py)
# puts full scale (peak) at 32767 u16 counts from mid-scale, i.e. 32767/16 12-bit counts:
# 400 V and 100 A rms at full scale.
CAL_DEFAULT = (400.0 * 1.4142135 * 16 / 32767, 100.0 * 1.4142135 * 16 / 32767, 0.0)

ticks_us = time.ticks_us
ticks_diff = time.ticks_diff


def sleep_ms(ms):
    # One wait with the VM's lock released, which a Ctrl-C (SIGINT) still ends: the unix
    # port's time.sleep_ms wakes every 0.5 ms to poll for events instead (a board waits for
    # an interrupt), which made an idle virtual meter use about a fifth of a host core.
    time.sleep(ms / 1000)


# Both cores reach the hardware (core 1: the off-switch's relay, button and tamper), and
# `_vhw` talks to the supervisor through one pipe each way: one core at a time.
_hw_lock = _thread.allocate_lock()


def _poll():
    with _hw_lock:
        _vhw.poll()


class _Pin:
    # A pin, as a machine.Pin: an output (relay, LED) or an input (button, tamper, set by the
    # host). value([v]), on(), off(), toggle(); an input's value() is what the host set.
    def __init__(self, name, out):
        self._name = name
        self._v = _vhw.outputs.get(name, 0) if out else None

    def value(self, v=None):
        if self._v is None:  # an input
            _poll()
            return 1 if _vhw.inputs.get(self._name) else 0
        if v is None:
            return self._v
        v = 1 if v else 0
        if v != self._v:
            self._v = v
            with _hw_lock:
                _vhw.output(self._name, v)
        return None

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def toggle(self):
        self.value(not self._v)


class _Adc:
    # Continuous sampling, as a timer-driven ADC with a DMA ring does on a Pico: each call
    # returns the samples taken since the previous one. The board's analog front end (the
    # supervisor) writes them into a ring that the VM maps read-only (the ROM's _vhw.adc_*),
    # a little ahead of real time; they count as taken when this board's clock reaches them.
    RATE_HZ = ADC_RATE_HZ

    def __init__(self):
        written, _, lead, _ = _vhw.adc_head()
        self._next = written - lead if written > lead else 0  # the sample of now
        self._k0 = self._next
        self._t0 = time.ticks_us()
        # what the real boards' ADCs count too (board/rp2_pico DmaAdc): calls that lost
        # samples, samples lost, and those of the latest call
        self.gaps = self.dropped = self.last_gap = 0

    def read_into(self, v_buf, i_buf):
        due = self._k0 + time.ticks_diff(time.ticks_us(), self._t0) * ADC_RATE_HZ // 1000000
        written = _vhw.adc_head()[0]
        if due > written:
            due = written  # not written yet (the host held the front end back): next time
        n = due - self._next
        self.last_gap = 0
        if n <= 0:
            return 0
        if n > len(v_buf):
            # The consumer fell behind the ring: the oldest samples are lost.
            self.last_gap = n - len(v_buf)
            self.gaps += 1
            self.dropped += self.last_gap
            self._next = due - len(v_buf)
            n = len(v_buf)
        _vhw.adc_read(self._next, n, v_buf, i_buf)
        self._next += n
        return n


class _HanTx:
    # Transmit-only: a HAN port is a data diode, so there is no read().
    def write(self, data):
        return _vhw.han_write(data)


led = _Pin("led", True)
relay = _Pin("relay", True)
button = _Pin("button", False)
tamper = _Pin("tamper", False)
cover = _Pin("cover", False)
jumper = _Pin("jumper", False)
adc = _Adc()

_han = None


def han_tx():
    global _han
    if _han is None:
        _han = _HanTx()
    return _han


# A battery-backed RTC: host time plus an offset that the supervisor keeps
# across power cuts. For soak tests the supervisor may make it run faster than host
# time (`--time-scale`): anchor + (host time - anchor) * scale; or hold it at a time
# that only the host moves (`set-clock`, "sim_time", which the supervisor's
# messages update while the VM runs): the firmware unchanged either way.
_rtc_offset = _vhw.meter.get("rtc_offset", 0)
_scale = _vhw.meter.get("time_scale", 1)
_anchor = _vhw.meter.get("time_anchor", 0)


def _host_s():
    t = _vhw.meter.get("sim_time")
    if t is not None:
        return t
    t = time.time()
    return t if _scale == 1 else _anchor + (t - _anchor) * _scale


def rtc_get():
    return int(_host_s()) + _rtc_offset


def rtc_set(t):
    global _rtc_offset
    _rtc_offset = int(t) - int(_host_s())
    _vhw.event({"ev": "rtc", "offset": _rtc_offset})


def entropy(n):
    import os

    return os.urandom(n)


_wan = None


def wan():
    # The WAN is the USB serial (here: the supervisor's client pty), as on a
    # bare Pico. A board config could return a UART adapter instead.
    global _wan
    if _wan is None:
        from stdio_wan import StdioWan

        _wan = StdioWan()
    return _wan


class _Rtc:
    def get(self):
        return rtc_get()

    def set(self, t):
        rtc_set(t)


rtc = _Rtc()


class _Nvram:
    # Battery-backed RAM that survives a power cut and costs no flash (an STM32's 4 KiB backup
    # SRAM on VBAT): here the ROM's, kept in the meter's nvram.bin. Plain bytes, no integrity
    # of its own: a write cut by a power loss may be half done, so users checksum their records.
    def __init__(self, mem):
        self.size = len(mem)
        self._mem = mem

    def read(self, off, n):
        if off < 0 or n < 0 or off + n > self.size:
            raise ValueError("nvram: out of range")
        return bytes(self._mem[off:off + n])

    def write(self, off, data):
        with _hw_lock:
            _vhw.nvram_write(off, data)


nvram = _Nvram(_vhw.nvram) if getattr(_vhw, "nvram", None) is not None else None
