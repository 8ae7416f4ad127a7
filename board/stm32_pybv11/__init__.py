# Board adapter: Pyboard v1.1 (STM32F405RG, Cortex-M4F at 168 MHz), MicroPython's
# stm32 port: the THREAD variant (pybv11-thread-*.dfu) has the `_thread` the off-switch
# runs in; the standard PYBV11 build has none (docs/hardware.md).
#
# Deployed to the meter as the package `board`, with the same surface as
# board/virtual (see there and docs/ARCHITECTURE.md): NAME, ADC_RATE_HZ,
# CAL_DEFAULT, led, relay, button, tamper, cover, jumper, adc.read_into(v_buf, i_buf),
# han_tx(), rtc (get/set) and rtc_get/rtc_set, entropy(n), wan(),
# ticks_us/ticks_diff/sleep_ms, and nvram (the backup SRAM, kept on VBAT).
#
# Pin map (X pins on the Pyboard's X header; the MCU pin in brackets):
#   V, mains voltage   X19 [PC0, ADC123_IN10]  sensor output biased to mid-scale (1.65 V);
#                                       read by ADC1
#   I, load current    X20 [PC1, ADC123_IN11]  CT + burden, biased to mid-scale; read by ADC3
#   relay              X11 [PC4]        to the relay driver's input; 1 = energised
#   button             X17 [PB3]        the on-board USR switch (also on the header):
#                                       pressed reads 1
#   tamper             X18 [PC13]       normally-closed switch to GND (pull-up): open, or a
#                                       cut wire, reads 1. PC13 is also the STM32's
#                                       RTC tamper input (unused here)
#   cover              Y1 [PC6]         terminal-cover switch, normally closed to GND while the
#                                       cover is on (pull-up): cover open reads 1
#   jumper             Y2 [PC7]         service jumper to GND behind the cover (pull-up):
#                                       fitted reads 1. Cover open AND jumper fitted at
#                                       power-up unseal a sealed meter (firmware/meter.py)
#   HAN TX             X9 [PB6]         UART(1) TX, 115200 8N1 (DSMR 5 P1); X10 (its RX
#                                       pin) is taken back as a plain input: nothing is read
#   WAN (optional)     X1 [PA0], X2 [PA1]  UART(4) TX, RX when WAN_UART = 4; default: USB serial
#   status LED         LED_GREEN [PA14] on-board (LED 2)
#
# Relay boot state: /data/relay_boot ("0" or "1"; none: 1, a new meter ships connected),
# written by the main core (board.relay.boot) before it lets the off-switch on core 1 move the
# pin to a new state (docs/OFFSWITCH.md); core 1 never touches a file. At import
# the relay pin is initialised with value= that state, so the output latch holds
# the level before the pin becomes an output: after a soft reset (Ctrl-D, a
# flash) the pin goes on driving the level it drove, without a glitch. From
# power-up until this module runs the STM32 holds the pin as a floating input:
# the relay driver needs a pull-down resistor (10 k) so that it sees 0, and with
# a monostable relay the contact is de-energised for that time (see
# docs/hardware.md). save_state removes the old file before it renames the new one in place,
# and load_state falls back to the ".new" file a power cut between the two may leave.
#
# ONE CORE. The STM32F405 has a single Cortex-M4. The off-switch runs as a
# separate `_thread` with the same isolation as on rp2 (its own task, keys and
# pins, reached only through the kernel's policy), but it shares this core with
# the other tasks: the stm32 port switches threads under a GIL, every few
# bytecodes or when a thread sleeps. It is not a second core.
#
# Sampling needs no interrupt (board/stm32_pybv11/stm32f4.py, docs/hardware.md): TIM2's update
# events trigger ADC1 (V) and ADC3 (I) at once, 2000 times a second, two DMA2 streams write
# the conversions into rings of ADC_RING samples, and TIM5 counts the triggers. It runs in
# hardware while a flash sector erase stalls the CPU (up to about a second); read_into hands
# out what arrived and counts a gap (adc.gaps, adc.lost) when the firmware came back later
# than the ring lasts. TIM3, 5 and 6 are pyb's own: TIM5 only for pyb.Servo, unused here.
import os
import time

import machine
from micropython import const

# The adapter code both real boards share: pins, the relay with its boot state, the HAN and
# WAN UART wrappers, the RTC (firmware/lib/hw_common.py); the STM32F4's own below MicroPython's
# drivers (stm32f4.py, in this package).
from hw_common import HanTx, In, Out, Relay, Rtc, UartWan
from hw_common import entropy as entropy  # the surface's entropy(n): os.urandom

from .stm32f4 import BackupSram, DmaAdc

NAME = "stm32_pybv11"

PIN_V = "X19"
PIN_I = "X20"
PIN_RELAY = "X11"
PIN_BUTTON = "X17"
PIN_TAMPER = "X18"
PIN_COVER = "Y1"
PIN_JUMPER = "Y2"
PIN_LED = "LED_GREEN"
HAN_UART = const(1)  # TX on X9
PIN_HAN_RX = "X10"  # UART(1)'s RX pin: taken back as a plain input
HAN_BAUD = const(115200)  # DSMR 5 P1: 115200 8N1
WAN_UART = None  # type: int | None  # 4: the WAN on UART(4) (X1 TX, X2 RX)
WAN_BAUD = const(115200)
RELAY_BOOT = "/data/relay_boot"
ADC_CH_V = const(10)  # PC0 = ADC123_IN10
ADC_CH_I = const(11)  # PC1 = ADC123_IN11

ADC_RATE_HZ = const(2000)  # per channel; V and I converted at the same instant
# Samples per channel in the DMA rings: longer than the CPU can be kept from reading them.
# With /data on the internal flash that is a sector erase (0.25-1 s on the F405's 16 KiB and
# 64 KiB sectors): 1.5 s at 2 kHz, 12 KB of RAM for both. Booted from a micro SD card (boot.py
# puts the card at / and the flash at /flash, which the firmware then never writes) a write is
# one card command (busy a few ms, at most 250 ms by the SD spec) and no erase stalls the CPU:
# 0.5 s, 4 KB, 8 KB more of the heap for the firmware (docs/hardware.md "Micro SD card").
try:
    os.stat("/flash")
    ADC_RING = 1024
except OSError:
    ADC_RING = 3072
# Metrology's read buffers (tasks/metrology.py BUF, 512 per channel elsewhere): 256 ms of
# samples per read every 100 ms is room enough, and the 1 KB saved is the boot's margin at this
# heap (docs/hardware.md "Micro SD card"); a late read leaves the rest in the DMA ring above.
ADC_READ_MAX = const(256)
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

_WEEKDAY_BASE = const(1)  # RTC.datetime weekday of a Monday: 1..7 on stm32

ticks_us = time.ticks_us
ticks_diff = time.ticks_diff
sleep_ms = time.sleep_ms

led = Out(machine.Pin(PIN_LED, machine.Pin.OUT))
relay = Relay(PIN_RELAY, RELAY_BOOT)
button = In(PIN_BUTTON, True)
tamper = In(PIN_TAMPER, False)
cover = In(PIN_COVER, False)
jumper = In(PIN_JUMPER, True)
adc = DmaAdc(PIN_V, ADC_CH_V, PIN_I, ADC_CH_I, ADC_RATE_HZ, ADC_RING)
nvram = BackupSram()

_han = None


def han_tx():
    global _han
    if _han is None:
        # rxbuf=0: no receive buffer. write() returns once the last byte is
        # out (the stm32 UART has no TX buffer): ~87 us per byte at 115200.
        uart = machine.UART(HAN_UART, HAN_BAUD, bits=8, parity=None, stop=1, rxbuf=0)
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
            _wan = UartWan(machine.UART(WAN_UART, WAN_BAUD, rxbuf=2048))
    return _wan
