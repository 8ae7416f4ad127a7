# Board adapter: Raspberry Pi Pico (RP2040), MicroPython's rp2 port. The pin map
# also fits a Pico W (the LED is on its wireless chip; Pin("LED") finds it) and
# a Pico 2.
#
# Deployed to the meter as the package `board`, with the same surface as
# board/virtual (see there and docs/ARCHITECTURE.md): NAME, ADC_RATE_HZ,
# CAL_DEFAULT, led, relay, button, tamper, adc.read_into(v_buf, i_buf),
# han_tx(), rtc (get/set) and rtc_get/rtc_set, entropy(n), wan(),
# ticks_us/ticks_diff/sleep_ms.
#
# Pin map (GPn = the RP2040's GPIO n; physical header pin in brackets):
#   V, mains voltage   GP26 = ADC0 [31]  sensor output biased to mid-scale (1.65 V)
#   I, load current    GP27 = ADC1 [32]  CT + burden, biased to mid-scale
#   relay              GP15 [20]         to the relay driver's input; 1 = energised
#   button             GP14 [19]         push button to GND (internal pull-up); pressed reads 1
#   tamper             GP13 [17]         normally-closed switch to GND (pull-up): open, or a
#                                        cut wire, reads 1
#   HAN TX             GP0 [1]           UART0 TX, 115200 8N1 (DSMR 5 P1); GP1 (UART0's RX
#                                        pin) is taken back as a plain input: nothing is read
#   WAN (optional)     GP4 [6], GP5 [7]  UART1 TX, RX when WAN_UART = 1; default: USB serial
#   status LED         "LED"             on-board (GP25 on a Pico)
#
# Relay boot state: the adapter owns /data/relay_boot ("0" or "1"), written
# before the pin moves whenever the relay is commanded to a new state. At import
# the relay pin is initialised with value= that state, so the output latch holds
# the level before the pin becomes an output: after a soft reset (Ctrl-D, a
# flash) the pin goes on driving the level it drove, without a glitch. From
# power-up until this module runs (about a second) the RP2040 holds the pin as an
# input with its pad pull-down, so the relay driver sees 0: with a monostable
# relay the contact is de-energised for that time (see docs/hardware.md).
#
# Off-switch: the RP2040 has two cores and the rp2 port runs a `_thread` on
# core 1, without a GIL. Sampling runs in a hard timer interrupt on core 0.
import os
import time
from array import array

import machine
import micropython
from micropython import const

NAME = "rp2_pico"

PIN_V = const(26)  # ADC0
PIN_I = const(27)  # ADC1
PIN_RELAY = const(15)
PIN_BUTTON = const(14)
PIN_TAMPER = const(13)
PIN_LED = "LED"
HAN_UART = const(0)
PIN_HAN_TX = const(0)
PIN_HAN_RX = const(1)  # UART0's RX pin: taken back as a plain input
HAN_BAUD = const(115200)  # DSMR 5 P1: 115200 8N1
WAN_UART = None  # type: int | None  # 1: the WAN on UART1 (GP4 TX, GP5 RX)
PIN_WAN_TX = const(4)
PIN_WAN_RX = const(5)
WAN_BAUD = const(115200)
RELAY_BOOT = "/data/relay_boot"

ADC_RATE_HZ = const(2000)  # per channel; V and I are read back to back
RING = const(512)  # samples per channel the interrupt can hold: 256 ms
# The analogue front end: the mains voltage and current that swing the ADC
# input from mid-scale to full scale (peak). A ZMPT101B-style voltage module
# trimmed so that 400 V peak gives 1.65 V, and a 100 A : 50 mA CT (SCT-013-000)
# on a 33 ohm burden (100 A peak, 71 A rms, gives 1.65 V). `meterctl calibrate`
# replaces these with measured gains.
V_PEAK_FS = 400.0
I_PEAK_FS = 100.0
# Volts and amps per 12-bit count (u16 sample >> 4), phase in sample periods:
# the same convention as board/virtual (metro.Accumulator).
CAL_DEFAULT = (V_PEAK_FS * 16 / 32767, I_PEAK_FS * 16 / 32767, 0.0)

_WRAP = const(0x3FFFFFFF)  # sample counters wrap here and stay small ints
_EPOCH_2000 = const(946684800)  # 2000-01-01 in Unix time
_WEEKDAY_BASE = const(0)  # RTC.datetime weekday of a Monday (rp2 ignores it)

ticks_us = time.ticks_us
ticks_diff = time.ticks_diff
sleep_ms = time.sleep_ms

# An exception raised in the sampling interrupt can still be reported.
micropython.alloc_emergency_exception_buf(100)


class _Out:
    def __init__(self, pin):
        self._pin = pin

    def value(self, v=None):
        if v is None:
            return self._pin.value()
        self._pin.value(1 if v else 0)
        return None

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def toggle(self):
        self.value(0 if self.value() else 1)


class _Relay(_Out):
    # The relay pin with a defined boot state (see the top of this file).
    def __init__(self, pin_id, path):
        self._path = path
        self._v = load_state(path)
        _Out.__init__(self, machine.Pin(pin_id, machine.Pin.OUT, value=self._v))

    def value(self, v=None):
        if v is None:
            return self._pin.value()
        v = 1 if v else 0
        if v != self._v:
            save_state(self._path, v)  # first: what was commanded survives a reset
            self._v = v
        self._pin.value(v)
        return None


def load_state(path):
    # "0" or "1" from path; a write cut short leaves path + ".new" (on FAT,
    # where a rename cannot replace a file); nothing at all means 0.
    for p in (path, path + ".new"):
        try:
            with open(p) as f:
                s = f.read(1)
        except OSError:
            continue
        if s in ("0", "1"):
            return int(s)
    return 0


def save_state(path, v):
    new = path + ".new"
    try:
        os.mkdir(path[: path.rfind("/")] or "/")
    except OSError:
        pass
    with open(new, "w") as f:
        f.write("1" if v else "0")
    try:
        os.rename(new, path)  # littlefs: replaces path atomically
    except OSError:
        try:
            os.remove(path)  # FAT: make way; load_state falls back to .new
        except OSError:
            pass
        os.rename(new, path)


class _In:
    def __init__(self, pin_id, invert):
        self._pin = machine.Pin(pin_id, machine.Pin.IN, machine.Pin.PULL_UP)
        self._invert = invert

    def value(self):
        v = self._pin.value()
        return 1 - v if self._invert else v


class _Adc:
    # Continuous sampling: a timer interrupt reads V then I (machine.ADC
    # read_u16, 0..65535) into two preallocated rings and counts the samples.
    # The interrupt allocates nothing: it only indexes arrays and adds small
    # ints. read_into(v_buf, i_buf) (array("H") buffers) copies what arrived
    # since the previous call; when more arrived than the caller's buffers (or
    # the ring) hold, the oldest are dropped and counted in `dropped`.
    RATE_HZ = ADC_RATE_HZ

    def __init__(self, read_v, read_i, ring=RING):
        self._rv = read_v  # bound methods, made once here
        self._ri = read_i
        self._v = array("H", bytes(2 * ring))
        self._i = array("H", bytes(2 * ring))
        self._mv_v = memoryview(self._v)
        self._mv_i = memoryview(self._i)
        self._size = ring
        self._mask = ring - 1  # ring is a power of two
        # At most this many are handed out per call: the interrupt may go on
        # writing (over the oldest slots) while read_into copies.
        self._keep = ring - ring // 4
        self._count = 0  # samples taken, mod 2**30 (written by the interrupt only)
        self._taken = 0  # samples handed out (read_into only)
        self.dropped = 0

    def sample(self, _timer):
        c = self._count
        k = c & self._mask
        self._v[k] = self._rv()
        self._i[k] = self._ri()
        self._count = (c + 1) & _WRAP

    def read_into(self, v_buf, i_buf):
        c = self._count
        new = (c - self._taken) & _WRAP
        n = min(new, len(v_buf), len(i_buf), self._keep)
        self._taken = c
        if n < new:
            self.dropped += new - n
        if not n:
            return 0
        k = (c - n) & self._mask  # the oldest slot handed out
        a = min(n, self._size - k)  # up to the end of the ring, then from its start
        vb = memoryview(v_buf)
        ib = memoryview(i_buf)
        vb[0:a] = self._mv_v[k:k + a]
        ib[0:a] = self._mv_i[k:k + a]
        if a < n:
            vb[a:n] = self._mv_v[0:n - a]
            ib[a:n] = self._mv_i[0:n - a]
        return n


class _HanTx:
    # Transmit-only: a HAN port is a data diode, so there is no read().
    def __init__(self, uart):
        self._uart = uart

    def write(self, data):
        return self._uart.write(data)


class _UartWan:
    # The WAN on a UART (WAN_UART): non-blocking readinto, like stdio_wan.
    def __init__(self, uart):
        self._uart = uart

    def readinto(self, buf):
        n = self._uart.any()
        if not n:
            return 0
        if n < len(buf):
            buf = memoryview(buf)[:n]
        return self._uart.readinto(buf) or 0

    def write(self, data):
        self._uart.write(data)


led = _Out(machine.Pin(PIN_LED, machine.Pin.OUT))
relay = _Relay(PIN_RELAY, RELAY_BOOT)
button = _In(PIN_BUTTON, True)
tamper = _In(PIN_TAMPER, False)
adc = _Adc(machine.ADC(PIN_V).read_u16, machine.ADC(PIN_I).read_u16)
# A hard interrupt: a soft (scheduled) callback would wait for the VM between
# bytecodes and lose its regular spacing.
_timer = machine.Timer(-1, mode=machine.Timer.PERIODIC, freq=ADC_RATE_HZ, callback=adc.sample,
                       hard=True)

_han = None


def han_tx():
    global _han
    if _han is None:
        uart = machine.UART(HAN_UART, HAN_BAUD, bits=8, parity=None, stop=1,
                            tx=machine.Pin(PIN_HAN_TX), rx=machine.Pin(PIN_HAN_RX),
                            txbuf=1024, rxbuf=32)
        # The RX pin goes back to plain GPIO: the UART's receiver is then wired
        # to nothing, and the HAN side cannot send the meter a byte.
        machine.Pin(PIN_HAN_RX, machine.Pin.IN, machine.Pin.PULL_DOWN)
        _han = _HanTx(uart)
    return _han


# The RTC counts in the port's epoch: 1970 on rp2, 2000 on stm32. Asked of
# the port at run time rather than assumed.
_epoch = _EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0
_rtc = machine.RTC()


def rtc_get():
    # Unix time, whole seconds. A Pico has no battery: after a power cut the
    # RTC restarts at 2021-01-01 and the clock task resumes from its saved time.
    return int(time.time()) + _epoch


def rtc_set(t):
    g = time.gmtime(int(t) - _epoch)
    # (year, month, day, weekday, hours, minutes, seconds, subseconds)
    _rtc.datetime((g[0], g[1], g[2], g[6] + _WEEKDAY_BASE, g[3], g[4], g[5], 0))


class _Rtc:
    def get(self):
        return rtc_get()

    def set(self, t):
        rtc_set(t)


rtc = _Rtc()


def entropy(n):
    # The RP2040's ring-oscillator random bits, through os.urandom.
    return os.urandom(n)


_wan = None  # type: object


def wan():
    # USB serial by default, as on the virtual board; WAN_UART selects a UART.
    global _wan
    if _wan is None:
        if WAN_UART is None:
            from stdio_wan import StdioWan

            _wan = StdioWan()
        else:
            _wan = _UartWan(machine.UART(WAN_UART, WAN_BAUD, tx=machine.Pin(PIN_WAN_TX),
                                         rx=machine.Pin(PIN_WAN_RX), rxbuf=2048))
    return _wan
