# Board adapter: Raspberry Pi Pico (RP2040), MicroPython's rp2 port (v1.26-v1.28). The pin
# map also fits a Pico W (the LED is on its wireless chip; Pin("LED") finds it) and a Pico 2
# (RP2350: board/rp2_pico2 imports this module; the chip's register addresses are chosen at
# run time).
#
# Deployed to the meter as the package `board`, with the same surface as
# board/virtual (see there and docs/ARCHITECTURE.md): NAME, ADC_RATE_HZ,
# CAL_DEFAULT, led, relay, button, tamper, cover, jumper, adc.read_into(v_buf, i_buf),
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
#   cover              GP12 [16]         terminal-cover switch, normally closed to GND while
#                                        the cover is on (pull-up): cover open reads 1
#   jumper             GP11 [15]         service jumper to GND behind the cover (pull-up):
#                                        fitted reads 1. Cover open AND jumper fitted at
#                                        power-up unseal a sealed meter (firmware/meter.py)
#   HAN TX             GP0 [1]           UART0 TX, 115200 8N1 (DSMR 5 P1); GP1 (UART0's RX
#                                        pin) is taken back as a plain input: nothing is read
#   WAN (optional)     GP4 [6], GP5 [7]  UART1 TX, RX when WAN_UART = 1; default: USB serial
#   status LED         "LED"             on-board (GP25 on a Pico)
#
# Relay boot state: /data/relay_boot ("0" or "1"; none: 1, a new meter ships connected),
# written by the main core (board.relay.boot) before it lets the off-switch on core 1 move the
# pin to a new state (docs/OFFSWITCH.md); core 1 never touches a file. At import
# the relay pin is initialised with value= that state, so the output latch holds
# the level before the pin becomes an output: after a soft reset (Ctrl-D, a
# flash) the pin goes on driving the level it drove, without a glitch. From
# power-up until this module runs (about a second) the RP2040 holds the pin as an
# input with its pad pull-down, so the relay driver sees 0: with a monostable
# relay the contact is de-energised for that time (see docs/hardware.md).
#
# Off-switch: the RP2040 has two cores and the rp2 port runs a `_thread` on
# core 1, without a GIL.
#
# Sampling without interrupts: the ADC runs free in round-robin mode over ADC0 and ADC1 (V,
# I, V, I, ...) into its FIFO, and two DMA channels move the conversions into a ring in RAM:
# the data channel, paced by the ADC's DREQ, writes RING_PAIRS (V, I) pairs and then chains
# to the control channel, which writes the ring's start address back into the data channel's
# WRITE_ADDR_TRIG alias: the data channel restarts at the ring's start (its count reloaded)
# within a few bus cycles, while the FIFO holds the next conversion. The control channel
# reads that address from a table whose words it walks one per lap (wrapping by ring_size),
# so its read address counts the laps. The DMA never writes outside the ring, no CPU time is
# spent per sample, and read_into() knows exactly how many samples arrived since its last
# call (up to 16 laps, 16 s; beyond, the clock says how many times 16), de-interleaving them
# (in viper, lib/metro_fast.py deinterleave, where the board has the native code).
# A single re-armed channel would stop at the ring's end until software re-armed it (a gap
# whenever the consumer is late); the DMA's own address wrapping on the ring needs the ring
# aligned to its 16 KiB, which the GC heap does not promise (the 64-byte lap table is aligned
# by hand inside a buffer twice its size).
# Facts (cited in docs/hardware.md, "Sampling by DMA"): pico-sdk 2.2.0 hardware_regs
# addressmap.h, adc.h, dma.h, dreq.h; MicroPython ports/rp2/rp2_dma.c.
import time
from array import array

import machine
import rp2
from micropython import const

# The adapter code both real boards share: pins, the relay with its boot state, the HAN and
# WAN UART wrappers, the RTC (firmware/lib/hw_common.py).
from hw_common import HanTx, In, Out, Relay, Rtc, UartWan
from hw_common import entropy as entropy  # the surface's entropy(n): os.urandom

_deinterleave = None
try:
    from metro_fast import deinterleave as _deinterleave  # type: ignore[assignment]  # None above
except (ImportError, ValueError, SyntaxError):  # no native code for this board: _split below
    pass

NAME = "rp2_pico"

PIN_V = const(26)  # ADC0
PIN_I = const(27)  # ADC1
PIN_RELAY = const(15)
PIN_BUTTON = const(14)
PIN_TAMPER = const(13)
PIN_COVER = const(12)
PIN_JUMPER = const(11)
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

# Per channel; V and I are converted 125 us apart (round robin). 8 kS/s of the ADC's 500 kS/s
# (docs/hardware.md "Sample rate").
ADC_RATE_HZ = const(4000)
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

_WEEKDAY_BASE = const(0)  # RTC.datetime weekday of a Monday (rp2 ignores it)

# The chip's registers (pico-sdk hardware_regs addressmap.h, dreq.h): the RP2350 moved the
# ADC and renumbered its DREQ; the DMA and the register layouts used here are the same. The
# port tells the chip by its DMA control fields: only the RP2350's have inc_read_rev
# (rp2_dma.c), whatever the build calls itself.
RP2350 = "inc_read_rev" in rp2.DMA.unpack_ctrl(0)
ADC_BASE = 0x400A0000 if RP2350 else 0x4004C000
DREQ_ADC = 48 if RP2350 else 36
_DMA_BASE = const(0x50000000)
_DMA_STRIDE = const(0x40)  # one channel's 16 registers
_AL2_WRITE_ADDR_TRIG = const(0x2C)
_CS = const(0x00)  # ADC registers (adc.h)
_FCS = const(0x08)
_FIFO = const(0x0C)
_DIV = const(0x10)
_CS_EN = const(0x1)
_CS_START_MANY = const(0x8)
_CS_RROBIN_LSB = const(16)
_FCS_EN = const(0x1)
_FCS_DREQ_EN = const(0x8)
_FCS_OVER = const(0x800)
_FCS_LEVEL_LSB = const(16)
_FCS_THRESH_1 = const(1 << 24)
_ADC_CLOCK_HZ = const(48000000)
# (V, I) pairs in the ring: 1.02 s at 4 kHz, 16 KiB. The main loop stops while the rp2 port
# erases flash (ports/rp2/rp2_flash.c): a littlefs save that compacts a metadata pair takes
# several 45-ms erases in a row (up to 400 ms measured on the virtual board's flash model
# under the rp2-pico profile), and 3/4 of the ring must outlast that.
RING_PAIRS = const(4096)
_LAPS = const(16)  # the lap counter's table: 16 words, 64 bytes
_LAPS_RING = const(6)  # ... wrapping at 2**6 bytes


class DmaAdc:
    # The ADC free-running into a DMA ring (see the header). read_into(v_buf, i_buf) copies
    # the oldest samples not yet handed out, V and I de-interleaved, as 16-bit values (the
    # 12-bit conversion << 4, read_u16's scale less its low-bit fill); what the buffers cannot
    # take waits in the ring for the next call. A gap (the caller later than the ring's 3/4)
    # loses the oldest samples:
    # `gaps` counts the calls that lost some and `dropped` the samples lost, and
    # `last_gap` says how many the latest call lost (0: the samples returned follow the
    # previous call's without a hole), so that metrology never folds a hole into energy
    # unknowingly.
    def __init__(self, rate_hz, pairs=RING_PAIRS):
        self.rate = rate_hz
        # ADC(pin) powers the ADC up (adc_init) and sets both pads as analogue inputs.
        machine.ADC(PIN_V)
        machine.ADC(PIN_I)
        mem = machine.mem32
        mem[ADC_BASE + _CS] = _CS_EN  # stop: no START_MANY, AINSEL 0
        mem[ADC_BASE + _FCS] = 0
        while (mem[ADC_BASE + _FCS] >> _FCS_LEVEL_LSB) & 0xF:
            _ = mem[ADC_BASE + _FIFO]  # drain
        mem[ADC_BASE + _FCS] = _FCS_OVER  # clear the sticky overflow flag
        # One conversion every 48 MHz / (2 * rate) clocks: (1 + INT) with INT = that - 1.
        div = _ADC_CLOCK_HZ // (2 * rate_hz)
        mem[ADC_BASE + _DIV] = (div - 1) << 8
        self._ring = array("I", bytes(4 * pairs))  # word j: V | I << 16 (two halfwords)
        self._mv = memoryview(self._ring)
        self._pairs = pairs
        self._keep = pairs - pairs // 4  # what one call may hand out: the DMA writes on
        data = rp2.DMA()
        ctl = rp2.DMA()
        data_ch = data.channel  # type: ignore[attr-defined]
        ctl_ch = ctl.channel  # type: ignore[attr-defined]
        data.config(read=ADC_BASE + _FIFO, write=self._ring, count=2 * pairs,
                    ctrl=data.pack_ctrl(size=1, inc_read=False, inc_write=True,
                                        treq_sel=DREQ_ADC, chain_to=ctl_ch))
        # The control channel reads the ring's address from a table of _LAPS copies, its read
        # address advancing one word a lap and wrapping at the table's end (ring_size: the
        # table is aligned to its 64 bytes inside a buffer twice that size), so its `read`
        # register counts the laps, modulo _LAPS, in hardware.
        table = array("I", bytes(8 * _LAPS))
        ctl.config(read=table)
        base = ctl.read  # type: ignore[attr-defined]
        skip = (-base) & (4 * _LAPS - 1)
        ring_addr = data.write  # type: ignore[attr-defined]
        for j in range(skip // 4, skip // 4 + _LAPS):
            table[j] = ring_addr
        self._table = table  # the DMA reads it: it must stay alive
        self._laps_at = base + skip
        ctl.config(read=base + skip,
                   write=_DMA_BASE + _DMA_STRIDE * data_ch + _AL2_WRITE_ADDR_TRIG, count=1,
                   ctrl=ctl.pack_ctrl(size=2, inc_read=True, inc_write=False,
                                      ring_size=_LAPS_RING, ring_sel=False))
        self._data = data
        self._ctl = ctl
        data.active(1)  # armed: it waits for the ADC's DREQ
        mem[ADC_BASE + _FCS] = _FCS_EN | _FCS_DREQ_EN | _FCS_THRESH_1
        mem[ADC_BASE + _CS] = _CS_EN | (0b11 << _CS_RROBIN_LSB) | _CS_START_MANY
        self._t = time.ticks_us()
        self._done = 0  # transfers made at the last call, modulo _LAPS rings
        self._backlog = 0  # pairs in the ring not yet handed out
        self.gaps = 0
        self.dropped = 0
        self.last_gap = 0

    def _transfers(self):
        # Transfers made since the start, modulo _LAPS rings: the lap count from the control
        # channel's read address, the position from the data channel's count; read again if a
        # lap ended in between. A count of 0 (the lap just ended, the restart a few cycles
        # away) reads as a full ring on the old lap: the same number.
        size = 2 * self._pairs
        ctl = self._ctl
        lap = ctl.read  # type: ignore[attr-defined]
        count = self._data.count  # type: ignore[attr-defined]
        lap2 = ctl.read  # type: ignore[attr-defined]
        if lap2 != lap:
            count = self._data.count  # type: ignore[attr-defined]
        return ((lap2 - self._laps_at) >> 2) * size + size - count

    def read_into(self, v_buf, i_buf):
        done = self._transfers()
        t = time.ticks_us()
        dt = time.ticks_diff(t, self._t)
        self._t = t
        size = 2 * self._pairs
        span = _LAPS * size
        # The hardware counts the transfers modulo _LAPS rings (16 s at 4 kHz); only a caller
        # later than that needs the clock, to within 8 s, for whole multiples of it.
        d = (done - self._done) % span
        m = (dt * 2 * self.rate // 1000000 - d + span // 2) // span
        new = ((done >> 1) - (self._done >> 1)) % (span >> 1)  # whole pairs (V first)
        if m > 0:
            new += m * (span >> 1)
        self._done = done
        back = self._backlog + new
        self.last_gap = 0
        if back > self._keep:  # the DMA has written over the oldest of them
            self.last_gap = back - self._keep
            self.gaps += 1
            self.dropped += self.last_gap
            back = self._keep
        n = min(back, len(v_buf), len(i_buf))
        self._backlog = back - n
        if not n:
            return 0
        k = ((done >> 1) - back) % self._pairs  # the oldest pair handed out
        a = self._pairs - k  # up to the ring's end, then from its start
        if a > n:
            a = n
        if _deinterleave is not None:
            _deinterleave(k, self._ring, v_buf, k + a, i_buf, 0)
            if a < n:
                _deinterleave(0, self._ring, v_buf, n - a, i_buf, a)
            return n
        self._split(self._mv[k:k + a], v_buf, i_buf, 0)
        if a < n:
            self._split(self._mv[0:n - a], v_buf, i_buf, a)
        return n

    @staticmethod
    def _split(words, v_buf, i_buf, j):
        # The hot loop (18 bytecodes a pair): word = V | I << 16, 12 bits each (FCS.ERR off:
        # bits 12-15 are 0), so w >> 12 is I << 4 exactly. The word stays a small int on a
        # 32-bit port (< 2**28): nothing is allocated per sample.
        for w in words:
            v_buf[j] = (w & 0xFFF) << 4
            i_buf[j] = w >> 12
            j += 1


ticks_us = time.ticks_us
ticks_diff = time.ticks_diff
sleep_ms = time.sleep_ms

led = Out(machine.Pin(PIN_LED, machine.Pin.OUT))
relay = Relay(PIN_RELAY, RELAY_BOOT)
button = In(PIN_BUTTON, True)
tamper = In(PIN_TAMPER, False)
cover = In(PIN_COVER, False)
jumper = In(PIN_JUMPER, True)
adc = DmaAdc(ADC_RATE_HZ)

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
        _han = HanTx(uart)
    return _han


rtc = Rtc(_WEEKDAY_BASE)
rtc_get = rtc.get
rtc_set = rtc.set

_wan = None  # type: object


def wan():
    # USB serial by default, as on the virtual board; WAN_UART selects a UART.
    global _wan
    if _wan is None:
        if WAN_UART is None:
            from stdio_wan import StdioWan

            _wan = StdioWan()
        else:
            _wan = UartWan(machine.UART(WAN_UART, WAN_BAUD, tx=machine.Pin(PIN_WAN_TX),
                                        rx=machine.Pin(PIN_WAN_RX), rxbuf=2048))
    return _wan
