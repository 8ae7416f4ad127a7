# Board adapter: the virtual board (MicroPython unix VM under a supervisor).
#
# Deployed to the meter as the package `board`. Every board adapter offers the
# same small surface, and the firmware reaches the hardware only through it:
#   NAME, ADC_RATE_HZ
#   led, relay           output pins: value([v]), on(), off(), toggle()
#   button, tamper       input pins: value()
#   adc                  read_into(v_buf, i_buf) -> n new samples per channel
#   han_tx()             transmit-only UART for the HAN (write() only)
#   rtc_get()/rtc_set(t) seconds since 2000-01-01 (MicroPython epoch)
#   entropy(n)           n random bytes from the board's entropy source
#   ticks_us()/ticks_diff(a, b), sleep_ms(ms)
# Here the surface is backed by the built-in module `_vhw`, which the
# virtual board's ROM (board/virtual/host/rom.py) wires to the supervisor.
import os
import time
from micropython import const

import _vhw
from board.waveform import Waveform

NAME = "virtual"
ADC_RATE_HZ = const(2000)  # per channel, as the Pico adapter samples

ticks_us = time.ticks_us
ticks_diff = time.ticks_diff
sleep_ms = time.sleep_ms


class _Out:
    def __init__(self, name):
        self._name = name
        self._v = _vhw.outputs.get(name, 0)

    def value(self, v=None):
        if v is None:
            return self._v
        v = 1 if v else 0
        if v != self._v:
            self._v = v
            _vhw.output(self._name, v)
        return None

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def toggle(self):
        self.value(not self._v)


class _In:
    def __init__(self, name):
        self._name = name

    def value(self):
        _vhw.poll()
        return 1 if _vhw.inputs.get(self._name) else 0


class _Adc:
    # Continuous sampling, as a timer-driven ADC with a DMA ring does on a
    # Pico: each call returns the samples taken since the previous one.
    RATE_HZ = ADC_RATE_HZ

    def __init__(self):
        self._wave = None
        self._params = None
        self._next = 0  # index of the next sample to deliver
        self._t0 = time.ticks_us()

    def _source(self):
        _vhw.poll()
        if self._params is not _vhw.wave:
            self._params = _vhw.wave
            self._wave = Waveform(_vhw.meter.get("seed", 0), self._params, ADC_RATE_HZ)
        return self._wave

    def read_into(self, v_buf, i_buf):
        wave = self._source()
        due = time.ticks_diff(time.ticks_us(), self._t0) * ADC_RATE_HZ // 1000000
        n = due - self._next
        if n > len(v_buf):
            # The consumer fell behind the ring: the oldest samples are lost.
            self._next = due - len(v_buf)
            n = len(v_buf)
        for k in range(n):
            v_buf[k], i_buf[k] = wave.sample(self._next + k)
        self._next += n
        return n


class _HanTx:
    # Transmit-only: a HAN port is a data diode, so there is no read().
    def write(self, data):
        return _vhw.han_write(data)


led = _Out("led")
relay = _Out("relay")
button = _In("button")
tamper = _In("tamper")
adc = _Adc()

_han = None


def han_tx():
    global _han
    if _han is None:
        _han = _HanTx()
    return _han


_rtc_offset = 0


def rtc_get():
    return time.time() + _rtc_offset


def rtc_set(t):
    global _rtc_offset
    _rtc_offset = t - time.time()


def entropy(n):
    return os.urandom(n)
