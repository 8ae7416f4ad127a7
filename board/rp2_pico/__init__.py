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
import time

import machine
from micropython import const

# The adapter code both real boards share: pins, the relay with its boot state, the ADC ring,
# the HAN and WAN UART wrappers, the RTC (firmware/lib/hw_common.py).
from hw_common import Adc, HanTx, In, Out, Relay, Rtc, UartWan
from hw_common import entropy as entropy  # the surface's entropy(n): os.urandom

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

ticks_us = time.ticks_us
ticks_diff = time.ticks_diff
sleep_ms = time.sleep_ms

led = Out(machine.Pin(PIN_LED, machine.Pin.OUT))
relay = Relay(PIN_RELAY, RELAY_BOOT)
button = In(PIN_BUTTON, True)
tamper = In(PIN_TAMPER, False)
adc = Adc(machine.ADC(PIN_V).read_u16, machine.ADC(PIN_I).read_u16)
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
