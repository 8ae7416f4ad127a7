# The hardware adapter code that the real boards share: board/rp2_pico and board/stm32_pybv11
# import it, and keep only what differs in their own package (pin maps, the sampling by DMA,
# the UARTs' set-up, the RTC's weekday numbering, core 1 or a thread). It lives in /lib, which
# `meterctl flash` deploys to every board; only those two adapters import it (the firmware
# itself reaches the hardware through `board` alone, docs/ARCHITECTURE.md). `make typecheck`
# checks it against both ports' stubs, as strictly as the adapters.
import os
import time

import machine
from micropython import const

_EPOCH_2000 = const(946684800)  # 2000-01-01 in Unix time


class Out:
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


class RelayBoot:
    # The relay's boot state, "0" or "1" in `path`: the level the pin is set up with at the
    # next start (Relay). Written by the main core only, when it stores the off-switch's
    # record, before it lets core 1 move the pin (docs/OFFSWITCH.md): core 1 never touches a
    # file (the rp2 port's VFS is not thread-safe). It holds the path only, not the pin.
    def __init__(self, path, v):
        self._path = path
        self._v = v

    def save(self, v):
        v = 1 if v else 0
        if v != self._v:
            save_state(self._path, v)
            self._v = v


class Relay(Out):
    # The relay pin with a defined boot state (`boot`, a RelayBoot the adapter owns). The pin
    # is initialised with value= that state, so the output latch holds the level before the
    # pin becomes an output: after a soft reset the pin goes on driving the level it drove,
    # without a glitch (docs/hardware.md). value(v) only drives the pin: it allocates nothing
    # and touches no file, so core 1 may call it.
    def __init__(self, pin_id, path):
        v = load_state(path)
        self.boot = RelayBoot(path, v)
        Out.__init__(self, machine.Pin(pin_id, machine.Pin.OUT, value=v))


def load_state(path):
    # "0" or "1" from path; a write cut short leaves path + ".new". Nothing at all (a new
    # meter) means 1: meters ship connected (docs/OFFSWITCH.md, "Relay at first boot"), and
    # the off-switch's own sealed record, when there is one, overrides the pin at its boot.
    for p in (path, path + ".new"):
        try:
            with open(p) as f:
                s = f.read(1)
        except OSError:
            continue
        if s in ("0", "1"):
            return int(s)
    return 1


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


class In:
    def __init__(self, pin_id, invert):
        self._pin = machine.Pin(pin_id, machine.Pin.IN, machine.Pin.PULL_UP)
        self._invert = invert

    def value(self):
        v = self._pin.value()
        return 1 - v if self._invert else v


class HanTx:
    # Transmit-only: a HAN port is a data diode, so there is no read().
    def __init__(self, uart):
        self._uart = uart

    def write(self, data):
        return self._uart.write(data)


class UartWan:
    # The WAN on a UART (the board's WAN_UART): non-blocking readinto, like stdio_wan.
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


class Rtc:
    # Unix time, whole seconds, on the port's RTC. The RTC counts in the port's epoch: 1970
    # on rp2, 2000 on stm32, asked of the port at run time rather than assumed.
    # weekday_base: RTC.datetime's weekday of a Monday (0 on rp2, which ignores it; 1 on
    # stm32, 1..7).
    def __init__(self, weekday_base):
        self._rtc = machine.RTC()
        self._monday = weekday_base
        self.epoch = _EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0

    def get(self):
        return int(time.time()) + self.epoch

    def set(self, t):
        g = time.gmtime(int(t) - self.epoch)
        # (year, month, day, weekday, hours, minutes, seconds, subseconds)
        self._rtc.datetime((g[0], g[1], g[2], g[6] + self._monday, g[3], g[4], g[5], 0))


def entropy(n):
    # The port's hardware random source (the RP2040's ring oscillator, the STM32's RNG).
    return os.urandom(n)
