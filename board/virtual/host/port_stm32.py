# The virtual board's models of the stm32 port's hardware modules (PYBV11, PYBV11-THREAD).
#
# Part of the virtual board's ROM (never flashed). Under a profile with port "stm32" the ROM
# calls install(hw) after mounting the filesystem and before boot.py: `pyb`, `machine`, `stm`
# and `time` (and `_thread` on a GIL build) are then these models, so board/stm32_pybv11 runs
# unchanged. They follow the official port's API (ports/stm32/*.c, extmod/machine_*.c,
# MicroPython v1.26-v1.28): the keywords a function lacks there raise TypeError here, and
# tests_host/test_port_stm32.py checks every name against the published stubs
# (micropython-stm32-stubs). They reach the virtual hardware only through `hw`
# (docs/virtual-board.md and the port-profile interface):
#   X11 (PC4)  -> hw.output("relay")    LED_GREEN (PA14), pyb.LED(2) -> hw.output("led")
#   X17 (PB3)  <- hw.inputs["button"]: the USR switch, to GND: pressed reads 0
#   X18 (PC13) <- hw.inputs["tamper"]: a normally-closed loop to GND: open (1) reads 1
#   Y1 (PC6)   <- hw.inputs["cover"]: the terminal cover's switch, closed to GND while on
#   Y2 (PC7)   <- hw.inputs["jumper"]: the service jumper, to GND: fitted reads 0
#   UART(1) TX -> hw.han_write, blocking for the bytes' time on the line, as the port's write
#   ADC1 + DMA2 + TIM2/TIM5 (registers, through stm.mem32) <- the supervisor's ADC ring
#   backup SRAM (0x40024000, 4 KiB) <-> hw.nvram / hw.nvram_write, or RAM when absent
#   RTC: battery-backed; its offset goes to the supervisor (hw.event "rtc") as board/virtual's
# Registers that are not modelled raise OSError: code cannot come to rely on one unnoticed.
import sys
import time as _time

import _thread
import micropython

_hw = None
# The ROM's pipes to the supervisor take one writer at a time (the off-switch's thread reaches
# its pins too); the register model one access at a time.
_hw_lock = _thread.allocate_lock()
_reg_lock = _thread.allocate_lock()
_EPOCH_2000 = 946684800  # the stm32 port counts from 2000 (py/mpconfig.h MICROPY_EPOCH_IS_2000)
_W = 0xFFFFFFFF

# -- board time: microseconds since install(), never wrapping (the VM's ticks_us wraps at 2**30)
_clock = [0, 0]  # last ticks_us, accumulated us


def _now_us():
    t = _time.ticks_us()
    _clock[1] += _time.ticks_diff(t, _clock[0])
    _clock[0] = t
    return _clock[1]


# -- clocks of PYBV11 (ports/stm32/boards/PYBV11/mpconfigboard.h: HSE 12 MHz, PLL to 168 MHz,
# APB1 = HCLK/4, APB2 = HCLK/2; a timer on an APB with a prescaler > 1 runs at twice its PCLK)
SYSCLK = 168000000
PCLK1 = 42000000
PCLK2 = 84000000
_TIM_APB1_CLK = 2 * PCLK1

# -- register map (RM0090 rev 19, section 2.3 "Memory map", and each peripheral's register map)
TIM2 = 0x40000000
TIM5 = 0x40000C00
PWR = 0x40007000
ADC1 = 0x40012000
ADC2 = 0x40012100
ADC3 = 0x40012200
ADC123_COMMON = 0x40012300
RCC = 0x40023800
BKPSRAM = 0x40024000
DMA1 = 0x40026000
DMA2 = 0x40026400
# the stm module's names for what is modelled (ports/stm32/make-stmconst.py generates them
# from the CMSIS headers; the values are the stubs', which tests_host checks)
STM_CONSTANTS = {
    "TIM2": TIM2, "TIM5": TIM5, "PWR": PWR, "ADC1": ADC1, "ADC3": ADC3,
    "ADC123_COMMON": ADC123_COMMON, "RCC": RCC, "DMA1": DMA1, "DMA2": DMA2,
    "TIM_CR1": 0x00, "TIM_CR2": 0x04, "TIM_SMCR": 0x08, "TIM_DIER": 0x0C, "TIM_SR": 0x10,
    "TIM_EGR": 0x14, "TIM_CNT": 0x24, "TIM_PSC": 0x28, "TIM_ARR": 0x2C,
    "ADC_SR": 0x00, "ADC_CR1": 0x04, "ADC_CR2": 0x08, "ADC_SMPR1": 0x0C, "ADC_SMPR2": 0x10,
    "ADC_SQR1": 0x2C, "ADC_SQR2": 0x30, "ADC_SQR3": 0x34, "ADC_DR": 0x4C,
    "DMA_LISR": 0x00, "DMA_HISR": 0x04, "DMA_LIFCR": 0x08, "DMA_HIFCR": 0x0C,
    "RCC_AHB1ENR": 0x30, "RCC_APB1ENR": 0x40, "RCC_APB2ENR": 0x44, "RCC_BDCR": 0x70,
    "RCC_CSR": 0x74, "PWR_CR": 0x00, "PWR_CSR": 0x04,
}

# RCC enable bits (RM0090: RCC_AHB1ENR, RCC_APB1ENR, RCC_APB2ENR)
_AHB1_DMA2EN = 1 << 22
_AHB1_BKPSRAMEN = 1 << 18
_APB1_TIM2EN = 1 << 0
_APB1_TIM5EN = 1 << 3
_APB1_PWREN = 1 << 28
_APB2_ADC1EN = 1 << 8
_APB2_ADC3EN = 1 << 10
# PWR (RM0090: PWR_CR, PWR_CSR): DBP unlocks the backup domain; BRE keeps the backup SRAM on VBAT
_PWR_DBP = 1 << 8
_PWR_BRE = 1 << 9
_PWR_BRR = 1 << 3


class _Regs:
    # The modelled registers: plain storage, with the live ones computed when read.
    def __init__(self, nvram, persist):
        self.persist = persist  # hw.nvram_write keeps what is written across power cuts
        self.r = {}
        self.wide = {}  # SxM0AR as written, before the 32-bit register cut it
        self.nvram = nvram  # the backup SRAM's contents (kept on VBAT)
        # one word's bytes on their way into it: a store into the backup SRAM allocates
        # nothing on a board (a firmware that logs a MemoryError there must not meet another)
        self.word = bytearray(4)
        self.sampler = _Sampler(self)

    def get(self, a):
        return self.r.get(a, 0)

    def enabled(self, reg, bit):
        return self.r.get(RCC + reg, 0) & bit

    def read(self, addr):
        s = self.sampler
        if BKPSRAM <= addr < BKPSRAM + 4096:
            if not self.enabled(0x30, _AHB1_BKPSRAMEN):
                return 0  # its clock off: reads 0
            o = addr - BKPSRAM
            nv = self.nvram
            return nv[o] | nv[o + 1] << 8 | nv[o + 2] << 16 | nv[o + 3] << 24
        if addr == PWR + 4:
            v = self.get(addr)
            return (v | _PWR_BRR) if v & _PWR_BRE else (v & ~_PWR_BRR)
        if DMA2 + 0x10 <= addr < DMA2 + 0xD0 and (addr - DMA2 - 0x14) % 0x18 == 0:
            return s.ndtr((addr - DMA2 - 0x14) // 0x18)
        if addr == TIM5 + 0x24:
            return s.tim5_cnt()
        if addr == TIM2 + 0x24:
            return s.tim2_cnt()
        if addr in (ADC1, ADC3):
            return s.adc_sr(addr)
        if addr in (DMA2, DMA2 + 0x04):
            raise OSError("port_stm32: no model of the DMA interrupt flags (0x%08x)" % addr)
        _check(addr)
        return self.get(addr)

    def write(self, addr, v, mask, raw=0):
        if BKPSRAM <= addr < BKPSRAM + 4096:
            # written only with its clock on and the backup domain unlocked (RM0090 5.1.2)
            if not self.enabled(0x30, _AHB1_BKPSRAMEN) or not self.get(PWR) & _PWR_DBP:
                return
            o = addr - BKPSRAM
            old = self.read(addr)
            v = (old & ~mask) | (v & mask)
            data = self.word
            data[0] = v & 0xFF
            data[1] = (v >> 8) & 0xFF
            data[2] = (v >> 16) & 0xFF
            data[3] = (v >> 24) & 0xFF
            self.nvram[o:o + 4] = data
            if self.get(PWR + 4) & _PWR_BRE and self.persist:
                with _hw_lock:  # kept across a power cut only with the regulator on
                    _hw.nvram_write(o, data)
            return
        _check(addr)
        if addr in (DMA2 + 0x08, DMA2 + 0x0C):  # LIFCR/HIFCR: write 1 to clear (no flags)
            return
        if _peripheral_off(self, addr):
            return  # a peripheral whose clock is off ignores writes
        self.r[addr] = (self.get(addr) & ~mask) | (v & mask)
        if DMA2 + 0x10 <= addr < DMA2 + 0xD0 and (addr - DMA2 - 0x1C) % 0x18 == 0:
            # SxM0AR: a 32-bit register; the 64-bit VM's buffer addresses need all their bits
            self.wide[addr] = raw
        if addr in (TIM2 + 0x24, TIM5 + 0x24):
            self.sampler.set_cnt(addr, v)
        self.sampler.changed()


_MODELLED = (
    (TIM2, 0x54), (TIM5, 0x54), (PWR, 0x08), (ADC1, 0x50), (ADC3, 0x50),
    (ADC123_COMMON, 0x0C), (RCC, 0x90), (DMA2, 0xD0),
)


def _check(addr):
    for base, size in _MODELLED:
        if base <= addr < base + size:
            return
    raise OSError("port_stm32: no model of the register at 0x%08x" % addr)


def _peripheral_off(regs, addr):
    if TIM2 <= addr < TIM2 + 0x54:
        return not regs.enabled(0x40, _APB1_TIM2EN)
    if TIM5 <= addr < TIM5 + 0x54:
        return not regs.enabled(0x40, _APB1_TIM5EN)
    if PWR <= addr < PWR + 8:
        return not regs.enabled(0x40, _APB1_PWREN)
    if ADC3 <= addr < ADC3 + 0x50:
        return not regs.enabled(0x44, _APB2_ADC3EN)
    if ADC1 <= addr < ADC123_COMMON + 0x0C:
        return not regs.enabled(0x44, _APB2_ADC1EN)
    if DMA2 <= addr < DMA2 + 0xD0:
        return not regs.enabled(0x30, _AHB1_DMA2EN)
    return False


# DMA2's request mapping for the ADCs (RM0090, "DMA2 request mapping"): (stream, channel) -> ADC
_DMA2_ADC = {(0, 0): ADC1, (4, 0): ADC1, (2, 1): ADC2, (3, 1): ADC2, (0, 2): ADC3, (1, 2): ADC3}


_FILL_CHUNK = 256  # conversions fill() copies at a time


class _Sampler:
    # TIM2's update events (TRGO, MMS = 010) trigger the ADCs' regular conversions (EXTSEL =
    # TIM2_TRGO, rising edge); a DMA2 stream in circular mode moves each ADC's conversions into
    # memory. TIM5 in external clock mode 1 on ITR0 (TIM2's TRGO) counts the triggers. All of it
    # runs in hardware: computed here from the board time when read, so it goes on while the CPU
    # is stalled by a flash erase (hw.stalls does not touch it). Conversion j is the
    # supervisor's ring sample taken at that board time: ADC channel 10 (X19, PC0) sees V,
    # channel 11 (X20, PC1) sees I.
    def __init__(self, regs):
        self.regs = regs
        self.t2_on = None  # board us when TIM2 started counting
        self.t2_freq = 0
        self.k0 = 0  # the ring's sample of TIM2's start
        self.chains = {}  # stream -> [first trigger, NDTR at start, M0AR, ADC, filled]
        self.t5 = None  # (trigger index when TIM5 began counting them, its CNT then)
        # fill()'s scratch, made once with the ROM: a board's DMA allocates nothing, so a fill
        # must not take heap from the firmware (at the board's heap a 512-B block is often not
        # to be had: metrology's every step failed on it)
        from array import array

        self.scratch = (array("H", bytes(2 * _FILL_CHUNK)), array("H", bytes(2 * _FILL_CHUNK)))

    def triggers(self):
        # update events of TIM2 since it started (TRGO when MMS = 010)
        if self.t2_on is None:
            return 0
        n = (_now_us() - self.t2_on) * self.t2_freq // 1000000
        if _hw is not None:
            written, rate, _, _ = _hw.adc_head()
            limit = (written - self.k0) * self.t2_freq // rate if rate else n
            if n > limit:
                n = limit  # the supervisor has not written them yet: next time
        return n

    def tim2_cnt(self):
        g = self.regs.get
        if self.t2_on is None:
            return g(TIM2 + 0x24)
        ticks = (_now_us() - self.t2_on) * _TIM_APB1_CLK // 1000000 // (g(TIM2 + 0x28) + 1)
        return ticks % (g(TIM2 + 0x2C) + 1)

    def tim5_cnt(self):
        g = self.regs.get
        if self.t5 is None:
            return g(TIM5 + 0x24)
        j0, c0 = self.t5
        return (c0 + self.triggers() - j0) % ((g(TIM5 + 0x2C) & _W) + 1)

    def set_cnt(self, addr, v):
        if addr == TIM5 + 0x24 and self.t5 is not None:
            self.t5 = (self.triggers(), v)

    def changed(self):
        # a register was written: which parts run now
        g = self.regs.get
        if self.regs.enabled(0x40, _APB1_TIM2EN) and g(TIM2) & 1:
            if self.t2_on is None:
                self.t2_on = _now_us()
                self.t2_freq = _TIM_APB1_CLK // ((g(TIM2 + 0x28) + 1) * (g(TIM2 + 0x2C) + 1))
                self.k0 = _ring_now()
        elif self.t2_on is not None:
            self._stop_all()
            self.t2_on = None
        trgo = self.t2_on is not None and (g(TIM2 + 0x04) >> 4) & 7 == 2
        counting = (trgo and self.regs.enabled(0x40, _APB1_TIM5EN) and g(TIM5) & 1
                    and g(TIM5 + 0x08) & 0x77 == 0x07)  # SMS = 111, TS = 000 (ITR0)
        j = self.triggers()  # one instant for all that starts now, as in hardware
        if counting and self.t5 is None:
            self.t5 = (j, g(TIM5 + 0x24))
        elif not counting and self.t5 is not None:
            self.regs.r[TIM5 + 0x24] = self.tim5_cnt()
            self.t5 = None
        for stream in range(8):
            adc = self._stream_adc(stream) if trgo else None
            c = self.chains.get(stream)
            if adc is not None and c is None:
                s = DMA2 + 0x10 + 0x18 * stream
                self.chains[stream] = [j, g(s + 4) & 0xFFFF, self.regs.wide.get(s + 0x0C, 0),
                                       adc, 0]
            elif adc is None and c is not None:
                self._stop(stream)

    def _stop_all(self):
        for stream in list(self.chains):
            self._stop(stream)
        if self.t5 is not None:
            self.regs.r[TIM5 + 0x24] = self.tim5_cnt()
            self.t5 = None

    def _stop(self, stream):
        self.fill(stream)
        self.regs.r[DMA2 + 0x14 + 0x18 * stream] = self.ndtr(stream)
        del self.chains[stream]

    def _stream_adc(self, stream):
        # the ADC whose conversions this stream moves, when ADC and stream are set up for it
        g = self.regs.get
        if not self.regs.enabled(0x30, _AHB1_DMA2EN):
            return None
        s = DMA2 + 0x10 + 0x18 * stream
        cr = g(s)
        # EN, DIR = 00, CIRC, no PINC, MINC, PSIZE = MSIZE = 01 (half-words), no DBM
        if cr & 0x47FC1 != 0x2D01:
            return None
        adc = _DMA2_ADC.get((stream, (cr >> 25) & 7))
        if adc is None or g(s + 8) != adc + 0x4C:  # PAR: that ADC's DR
            return None
        n = g(s + 4) & 0xFFFF
        if n < 1 or not self.regs.wide.get(s + 0x0C):
            return None
        if not self.regs.enabled(0x44, 1 << (8 + (adc - ADC1) // 0x100)):
            return None
        cr2 = g(adc + 0x08)
        # ADON, DMA, DDS; EXTSEL = 0110 (TIM2_TRGO), EXTEN = 01 (rising): RM0090 ADC_CR2
        if cr2 & 0x301 != 0x301 or (cr2 >> 24) & 0xF != 6 or (cr2 >> 28) & 3 != 1:
            return None
        if (g(adc + 0x04) >> 24) & 3 or (g(adc + 0x2C) >> 20) & 0xF:
            return None  # 12-bit resolution and one regular conversion (L = 0) only
        return adc

    def ndtr(self, stream):
        c = self.chains.get(stream)
        if c is None:
            return self.regs.get(DMA2 + 0x14 + 0x18 * stream) & 0xFFFF
        done = self.triggers() - c[0]
        self.fill(stream, done)  # the memory holds what NDTR says was moved, no less
        return c[1] - done % c[1]

    def adc_sr(self, addr):
        return self.regs.get(addr) & ~(1 << 5)  # OVR never: the DMA keeps up in the model

    def fill(self, stream, done=None):
        # write the conversions made since the last fill (up to `done`) into the stream's memory
        c = self.chains.get(stream)
        if c is None or _hw is None:
            return
        j0, n0, addr, adc, start = c
        if done is None:
            done = self.triggers() - j0
        if done - start > n0:
            start = done - n0  # the older ones were overwritten since
        if done <= start:
            return
        import uctypes

        ch = self.regs.get(adc + 0x34) & 0x1F  # SQ1
        left = self.regs.get(adc + 0x08) & (1 << 11)  # ALIGN
        mem = uctypes.bytearray_at(addr, 2 * n0)
        chunk = _FILL_CHUNK
        vb, ib = self.scratch
        rate = _hw.adc_head()[1]
        t2 = self.t2_freq
        if rate > t2:
            # a front end faster than TIM2 (4 kHz against the Pyboard's 2 kHz): the samples a
            # chunk of conversions spans must fit the scratch
            chunk = max(1, _FILL_CHUNK * t2 // rate)
        k = start
        while k < done:
            m = min(chunk, done - k)
            # conversion j is the ring's sample at TIM2's start plus j trigger periods: the
            # front end's sample k0 + j * rate // t2 (consecutive ones at TIM2 == the ring's rate)
            s0 = self.k0 + (j0 + k) * rate // t2
            span = self.k0 + (j0 + k + m - 1) * rate // t2 - s0 + 1
            _hw.adc_read(s0, span, vb, ib)
            src = vb if ch == 10 else ib if ch == 11 else None
            for q in range(m):
                x = 0
                if src is not None:  # the 12-bit conversion
                    x = src[q if span == m else self.k0 + (j0 + k + q) * rate // t2 - s0] >> 4
                if left:
                    x <<= 4
                p = 2 * ((k + q) % n0)
                mem[p] = x & 0xFF
                mem[p + 1] = x >> 8
            k += m
        c[4] = done


def _ring_now():
    # the ring's sample of this instant (board/virtual _Adc: the newest written less the lead)
    if _hw is None:
        return 0
    written, _, lead, _ = _hw.adc_head()
    return written - lead if written > lead else 0


_regs = None


class _Mem:
    # stm.mem8/16/32 and machine.mem8/16/32 (extmod/machine_mem.c): subscript by address;
    # a misaligned address raises ValueError; a 32-bit read returns a signed int as on the board.
    def __init__(self, width):
        self._w = width

    def __getitem__(self, addr):
        w = self._w
        if addr & (w - 1):
            raise ValueError("address %08x is not aligned to %d bytes" % (addr, w))
        with _reg_lock:
            word = _regs.read(addr & ~3)
        v = (word >> (8 * (addr & 3))) & ((1 << (8 * w)) - 1)
        if w == 4 and v & 0x80000000:
            v -= 1 << 32
        return v

    def __setitem__(self, addr, v):
        w = self._w
        if addr & (w - 1):
            raise ValueError("address %08x is not aligned to %d bytes" % (addr, w))
        sh = 8 * (addr & 3)
        mask = ((1 << (8 * w)) - 1) << sh
        with _reg_lock:
            _regs.write(addr & ~3, (v << sh) & mask, mask, v)


mem8 = _Mem(1)
mem16 = _Mem(2)
mem32 = _Mem(4)


# -- pins (ports/stm32/boards/PYBV11/pins.csv)
_PIN_NAMES = {
    "X1": "A0", "X2": "A1", "X3": "A2", "X4": "A3", "X5": "A4", "X6": "A5", "X7": "A6",
    "X8": "A7", "X9": "B6", "X10": "B7", "X11": "C4", "X12": "C5", "X17": "B3", "X18": "C13",
    "X19": "C0", "X20": "C1", "X21": "C2", "X22": "C3", "Y1": "C6", "Y2": "C7", "Y3": "B8",
    "Y4": "B9", "Y5": "B12", "Y6": "B13", "Y7": "B14", "Y8": "B15", "Y9": "B10", "Y10": "B11",
    "Y11": "B0", "Y12": "B1", "SW": "B3", "LED_RED": "A13", "LED_GREEN": "A14",
    "LED_YELLOW": "A15", "LED_BLUE": "B4",
}
_OUTPUTS = {"C4": "relay", "A14": "led"}  # cpu pin -> hw.outputs name
_INPUTS = {"B3": "button", "C13": "tamper", "C6": "cover", "C7": "jumper"}
# cpu name -> the pin's object. A board's pins are static objects in flash and Pin(...)
# returns the one named (ports/stm32/pin.c mp_pin_make_new, pin_find; v1.28.0): the same object
# for every call and no heap. So all of the STM32F405RG's (LQFP64: ports A-C, PD2) are made at
# install, before the ROM weighs its ballast, and Pin() only finds one.
_pins = {}
_CPU_PINS = tuple("%s%d" % (p, i) for p in "ABC" for i in range(16)) + ("D2",)
_NOT_GIVEN = object()


class _PinState:
    def __init__(self, cpu):
        self.cpu = cpu
        self.mode = Pin.IN  # reset state: input, floating
        self.pull = Pin.PULL_NONE
        self.latch = 0
        self.af = -1


class Pin:
    # pyb.Pin and machine.Pin (the same type on stm32: ports/stm32/pin.c)
    IN = 0
    OUT = 1
    OUT_PP = 1
    OUT_OD = 0x11
    AF_PP = 2
    AF_OD = 0x12
    ANALOG = 3
    ALT = 2
    ALT_OPEN_DRAIN = 0x12
    OPEN_DRAIN = 0x11
    PULL_NONE = 0
    PULL_UP = 1
    PULL_DOWN = 2

    def __new__(cls, id, *args, **kw):
        if isinstance(id, Pin):
            return id
        p = None
        if isinstance(id, str):
            p = _pins.get(_PIN_NAMES.get(id, id))
        if p is None:
            raise ValueError("Pin(%s) doesn't exist" % (id,))
        return p

    def __init__(self, id, *args, **kw):
        if args or kw:
            self.init(*args, **kw)

    def init(self, mode, pull=None, af=-1, *, value=_NOT_GIVEN, alt=-1):
        s = self._s
        if mode not in (0, 1, 2, 3, 0x11, 0x12):
            raise ValueError("invalid pin mode: %d" % mode)
        if pull is None:
            pull = Pin.PULL_NONE
        if pull not in (0, 1, 2):
            raise ValueError("invalid pin pull: %d" % pull)
        if value is not _NOT_GIVEN:
            s.latch = 1 if value else 0  # the output latch is set before the mode
        s.mode = mode
        s.pull = pull
        s.af = alt if alt != -1 else af
        if mode in (Pin.OUT, Pin.OUT_OD):
            _drive(s)

    def value(self, v=_NOT_GIVEN):
        s = self._s
        if v is _NOT_GIVEN:
            return _level(s)
        s.latch = 1 if v else 0
        if s.mode in (Pin.OUT, Pin.OUT_OD):
            _drive(s)
        return None

    def __call__(self, v=_NOT_GIVEN):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    high = on
    low = off

    def name(self):
        return self._s.cpu

    def names(self):
        return [self._s.cpu] + [b for b, c in _PIN_NAMES.items() if c == self._s.cpu]

    def port(self):
        return ord(self._s.cpu[0]) - ord("A")

    def pin(self):
        return int(self._s.cpu[1:])

    def mode(self):
        return self._s.mode

    def pull(self):
        return self._s.pull

    def af(self):
        return self._s.af


def _drive(s):
    name = _OUTPUTS.get(s.cpu)
    if name is not None and _hw is not None and _hw.outputs.get(name) != s.latch:
        with _hw_lock:
            _hw.output(name, s.latch)


def _level(s):
    if s.mode in (Pin.OUT, Pin.OUT_OD):
        return s.latch
    name = _INPUTS.get(s.cpu)
    if name is None or _hw is None:
        return 1 if s.pull == Pin.PULL_UP else 0
    with _hw_lock:
        _hw.poll()
    active = 1 if _hw.inputs.get(name) else 0
    if name in ("button", "jumper"):  # the USR switch connects PB3 to GND; a fitted jumper PC7
        return 0 if active else (1 if s.pull == Pin.PULL_UP else 0)
    # tamper, cover: a closed loop holds the pin at GND; open, only a pull-up makes it 1
    return (1 if s.pull == Pin.PULL_UP else 0) if active else 0


class LED:
    # pyb.LED(1..4): red, green, yellow, blue (ports/stm32/led.c)
    _CPU = {1: "A13", 2: "A14", 3: "A15", 4: "B4"}

    def __init__(self, id):
        if id not in self._CPU:
            raise ValueError("LED(%d) doesn't exist" % id)
        self._pin = Pin(self._CPU[id], Pin.OUT)

    def on(self):
        self._pin.value(1)

    def off(self):
        self._pin.value(0)

    def toggle(self):
        self._pin.value(1 - self._pin.value())

    def intensity(self, value=None):
        if value is None:
            return 255 if self._pin.value() else 0
        self._pin.value(1 if value > 0 else 0)
        return None


class Switch:
    # pyb.Switch(): the USR switch, value() True while pressed (ports/stm32/usrsw.c)
    def __init__(self):
        self._pin = Pin("SW", Pin.IN, Pin.PULL_UP)
        self._cb = None

    def value(self):
        return not self._pin.value()

    def __call__(self):
        return self.value()

    def callback(self, fun):
        self._cb = fun


# -- timers (ports/stm32/timer.c)
_timers = {}


class Timer:
    UP = 0
    DOWN = 0x10
    CENTER = 0x20

    def __init__(self, id, **kw):
        if not 1 <= id <= 14:
            raise ValueError("Timer(%d) doesn't exist" % id)
        self._id = id
        self._cb = None
        self._thread = None
        self._lost = 0
        _timers[id] = self
        if kw:
            self.init(**kw)

    def init(self, *, freq=None, prescaler=0xFFFFFFFF, period=0xFFFFFFFF, tick_hz=1000,
             mode=0, div=1, callback=None, deadtime=0, brk=0, hard=None):
        # `hard` exists from v1.27.0 (v1.26.0's timer.c lacks it)
        if hard is not None and _release() < (1, 27):
            raise TypeError("unexpected keyword argument 'hard'")
        if freq is not None:
            if freq <= 0:
                raise ValueError("must have positive freq")
            ticks = _TIM_APB1_CLK // freq if self._id in (2, 3, 4, 5, 6, 7, 12, 13, 14) \
                else 2 * PCLK2 // freq
            psc = 1
            top = 0xFFFFFFFF if self._id in (2, 5) else 0xFFFF
            while ticks > top:
                psc <<= 1
                ticks >>= 1
            prescaler, period = psc - 1, ticks - 1
        elif prescaler == 0xFFFFFFFF or period == 0xFFFFFFFF:
            if period == 0xFFFFFFFF:
                raise TypeError("must specify either freq, period, or prescaler and period")
            prescaler, period = (_TIM_APB1_CLK // tick_hz) - 1, period - 1
        self._hard = True if hard is None else hard
        base = {2: TIM2, 5: TIM5}.get(self._id)
        if base is not None:
            en = _APB1_TIM2EN if self._id == 2 else _APB1_TIM5EN
            mem32[RCC + 0x40] = mem32[RCC + 0x40] | en
            mem32[base + 0x28] = prescaler
            mem32[base + 0x2C] = period
            mem32[base] = mem32[base] | 0x81  # ARPE, CEN
        self._psc = prescaler
        self._arr = period
        self.callback(callback)

    def deinit(self):
        self.callback(None)
        base = {2: TIM2, 5: TIM5}.get(self._id)
        if base is not None:
            mem32[base] = mem32[base] & ~1

    def freq(self):
        return _TIM_APB1_CLK // ((self._psc + 1) * (self._arr + 1))

    def prescaler(self):
        return self._psc

    def period(self):
        return self._arr

    def source_freq(self):
        return _TIM_APB1_CLK

    def counter(self):
        base = {2: TIM2, 5: TIM5}.get(self._id)
        return mem32[base + 0x24] if base is not None else 0

    def callback(self, fun):
        # The update interrupt calls fun(timer) at freq(). An interrupt cannot run while a
        # flash erase stalls the CPU: of the ticks inside one of hw.stalls only the first
        # runs, when the stall ends (the NVIC holds one pending); the others are lost.
        self._cb = fun
        if fun is not None and self._thread is None:
            self._thread = True
            _thread.start_new_thread(self._run, ())

    def _run(self):
        period = 1000000 // self.freq() or 1
        t = _time.ticks_us()
        late = None  # the stall whose first tick is pending
        while self._cb is not None:
            t = _time.ticks_add(t, period)
            stall = _stall_at(t)
            if stall is not None:
                if stall is late:
                    self._lost += 1  # the NVIC holds one pending update, not more
                    continue
                late = stall
                t_run = stall[1]  # runs when the stall ends
            else:
                t_run = t
            wait = _time.ticks_diff(t_run, _time.ticks_us())
            if wait > 0:
                _time.sleep_us(wait)
            cb = self._cb
            if cb is not None:
                cb(self)
        self._thread = None


def _stall_at(t):
    # the stall (of hw.stalls) that tick time t falls in, or None
    for st in getattr(_hw, "stalls", ()):
        if _time.ticks_diff(t, st[0]) >= 0 and _time.ticks_diff(st[1], t) > 0:
            return st
    return None


# -- UART (extmod/machine_uart.c with ports/stm32/machine_uart.c; pyb.UART is machine.UART)
_UART_IDS = (1, 2, 3, 4, 6)  # PYBV11: mpconfigboard.h MICROPY_HW_UARTn_TX


class UART:
    RTS = 0x100
    CTS = 0x200
    IRQ_RXIDLE = 0x10
    IRQ_RX = 0x20

    def __init__(self, id, *args, **kw):
        if isinstance(id, str):
            id = {"XA": 4, "XB": 1, "YA": 6, "YB": 3}.get(id, -1)
        if id not in _UART_IDS:
            raise ValueError("UART(%d) doesn't exist" % id)
        self._id = id
        self._baud = 0
        if args or kw:
            self.init(*args, **kw)

    # `invert` is STM32H7 only (ports/stm32/machine_uart.c): a TypeError on the F405
    def init(self, baudrate, bits=8, parity=None, stop=1, *, flow=0, timeout=0,
             timeout_char=0, rxbuf=-1, read_buf_len=64):
        if bits not in (7, 8, 9) or stop not in (1, 2) or parity not in (None, 0, 1):
            raise ValueError("unsupported combination of bits and parity")
        self._baud = baudrate
        self._char_bits = 1 + bits + stop + (0 if parity is None else 1) - \
            (1 if parity is not None and bits == 9 else 0)

    def deinit(self):
        self._baud = 0

    def write(self, buf):
        if not self._baud:
            raise OSError(5)  # EIO: the UART is not initialised
        data = bytes(buf)
        # the port writes each byte into the data register and waits for room: the call
        # returns once the last one is in the shifter, len * (start + bits + stop) / baud later
        _time.sleep_us(len(data) * self._char_bits * 1000000 // self._baud)
        if self._id == 1 and _hw is not None:
            with _hw_lock:
                _hw.han_write(data)
        return len(data)

    def any(self):
        return 0  # nothing is wired to any RX pin of the virtual board

    def read(self, nbytes=-1):
        return None

    def readinto(self, buf, nbytes=-1):
        return None

    def readline(self):
        return None

    def txdone(self):
        return True

    def flush(self):
        pass

    def sendbreak(self):
        pass


# -- RTC (ports/stm32/rtc.c; machine.RTC is pyb.RTC): on the LSE with VBAT, battery-backed
_rtc_offset = [0]


def _host_s():
    m = _hw.meter if _hw is not None else {}
    t = m.get("sim_time")
    if t is not None:
        return t
    t = _time.time()
    scale = m.get("time_scale", 1)
    if scale != 1:
        anchor = m.get("time_anchor", 0)
        t = anchor + (t - anchor) * scale
    return t


def _unix_now():
    return _host_s() + _rtc_offset[0]


class RTC:
    def __init__(self):
        pass

    def init(self):
        pass

    def info(self):
        return 0x2000000  # LSE in use, started

    def datetime(self, datetimetuple=None):
        if datetimetuple is None:
            t = _unix_now()
            g = _time.gmtime(int(t))
            sub = 255 - int((t - int(t)) * 256) % 256  # counts down from PREDIV_S (255)
            return (g[0], g[1], g[2], g[6] + 1, g[3], g[4], g[5], sub)
        y, mo, d, wd, h, mi, s = datetimetuple[:7]  # the weekday is stored, not checked
        _rtc_offset[0] = _unix_seconds(y, mo, d, h, mi, s) - int(_host_s())
        if _hw is not None:
            with _hw_lock:
                _hw.event({"ev": "rtc", "offset": _rtc_offset[0]})
        return None

    def wakeup(self, timeout, callback=None):
        pass

    def calibration(self, cal=None):
        return 0 if cal is None else None


# -- ADC (ports/stm32/adc.c pyb.ADC; machine_adc.c machine.ADC): one conversion now
def _adc_now(cpu):
    if _hw is None:
        return 0
    k = _ring_now()
    v = _bytes_arr(1)
    i = _bytes_arr(1)
    _hw.adc_read(k - 1 if k else 0, 1, v, i)
    return {"C0": v[0], "C1": i[0]}.get(cpu, 0)


def _bytes_arr(n):
    from array import array

    return array("H", bytes(2 * n))


class ADC:
    # pyb.ADC(pin): read() -> 0..4095
    def __init__(self, pin):
        p = pin if isinstance(pin, Pin) else Pin(pin)
        if p._s.cpu not in ("A0", "A1", "A2", "A3", "A4", "A5", "A6", "A7", "B0", "B1", "C0",
                            "C1", "C2", "C3", "C4", "C5"):
            raise ValueError("pin %s does not have ADC capabilities" % p._s.cpu)
        p.init(Pin.ANALOG)
        self._cpu = p._s.cpu

    def read(self):
        return _adc_now(self._cpu) >> 4


class MachineADC:
    # machine.ADC(pin): read_u16() -> 0..65535
    def __init__(self, id):
        p = id if isinstance(id, Pin) else Pin(id)
        p.init(Pin.ANALOG)
        self._cpu = p._s.cpu

    def read_u16(self):
        raw = _adc_now(self._cpu) >> 4
        return raw << 4 | raw >> 8  # 12 bits scaled to 16 as the port does


# -- the rest of pyb (ports/stm32/modpyb.c)
def millis():
    return _time.ticks_ms()


def micros():
    return _time.ticks_us()


def elapsed_millis(start):
    return _time.ticks_diff(_time.ticks_ms(), start)


def elapsed_micros(start):
    return _time.ticks_diff(_time.ticks_us(), start)


def delay(ms):
    # A board sleeps in WFI until an interrupt; the unix port's time.sleep_ms wakes every
    # 0.5 ms to poll for events instead (ports/unix MICROPY_INTERNAL_WFE), a large share of a
    # host core for an idle meter. time.sleep is one select with the VM's lock released, which
    # a SIGINT ends as a board's Ctrl-C ends a delay (board/virtual sleep_ms).
    _time.sleep(ms / 1000)


def udelay(us):
    _time.sleep(us / 1000000)


def freq():
    return (SYSCLK, SYSCLK, PCLK1, PCLK2)


def unique_id():
    return bytes(range(0x30, 0x3C))


def usb_mode(modestr=None, *, port=-1, vid=0xF055, pid=-1, msc=(), hid=None,
             high_speed=False):
    return "VCP" if modestr is None else None


def sync():
    pass


def disable_irq():
    return True


def enable_irq(state=True):
    pass


def idle():
    _time.sleep_ms(1)


def wfi():
    delay(1)


# -- time (extmod/modtime.c with ports/stm32/mphalport.h): the RTC's time, from 2000
class _Time:
    ticks_ms = _time.ticks_ms
    ticks_us = _time.ticks_us
    ticks_cpu = _time.ticks_cpu
    ticks_add = _time.ticks_add
    ticks_diff = _time.ticks_diff
    sleep = _time.sleep
    sleep_ms = delay
    sleep_us = udelay

    def time():
        return int(_unix_now()) - _EPOCH_2000

    def time_ns():
        return int(_unix_now() * 1000000000) - _EPOCH_2000 * 1000000000

    def gmtime(secs=None):
        # 8 items, as the board's (the unix port adds a ninth)
        if secs is None:
            return _time.gmtime(int(_unix_now()))[:8]
        return _time.gmtime(int(secs) + _EPOCH_2000)[:8]

    localtime = gmtime

    def mktime(t):
        return _unix_seconds(t[0], t[1], t[2], t[3], t[4], t[5]) - _EPOCH_2000


def _unix_seconds(y, mo, d, h, mi, s):
    # UTC broken-down time to Unix seconds (the unix VM's mktime would apply the host's zone)
    y2 = y - (mo <= 2)
    era = y2 // 400
    yoe = y2 - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + h * 3600 + mi * 60 + s


def _release():
    r = getattr(_hw, "profile", None) or {}
    v = r.get("impl_version") or [1, 28, 0]
    return (v[0], v[1])


# -- _thread on PYBV11-THREAD: a thread's stack and its node come from the GC heap
# (ports/stm32/mpthreadport.c mp_thread_create: 4096 bytes unless stack_size() says more, at
# least 2560). The unix VM gives threads OS stacks and runs them without a GIL: this charges
# the heap; the GIL's one-at-a-time switching is not modelled.
class _Thread:
    allocate_lock = _thread.allocate_lock
    get_ident = _thread.get_ident
    exit = _thread.exit
    LockType = getattr(_thread, "LockType", None)
    _stack = [4096]

    def stack_size(size=None):
        old = _Thread._stack[0]
        if size is not None:
            _Thread._stack[0] = max(2560, size) if size else 4096
            _thread.stack_size(size)  # the VM thread's own (OS) stack, as on the unix profile
        return old

    def start_new_thread(fun, args, kwargs=None):
        block = bytearray(_Thread._stack[0] + 32)  # the stack and its pyb_thread_t

        def entry(*a):
            try:
                fun(*a, **(kwargs or {}))
            finally:
                del block[:]

        return _thread.start_new_thread(entry, tuple(args))


def install(hw):
    # Put the models in sys.modules for the firmware's imports (called by the ROM).
    global _hw, _regs
    _hw = hw
    _clock[0] = _time.ticks_us()
    _clock[1] = 0
    _pins.clear()
    for cpu in _CPU_PINS:
        p = object.__new__(Pin)
        p._s = _PinState(cpu)
        _pins[cpu] = p
    _timers.clear()
    nv = getattr(hw, "nvram", None)
    persist = nv is not None and hasattr(hw, "nvram_write")
    _regs = _Regs(nv if nv is not None else bytearray(4096), persist)
    meter = getattr(hw, "meter", None) or {}
    _rtc_offset[0] = meter.get("rtc_offset", 0)

    pyb = _module("pyb", Pin=Pin, LED=LED, Switch=Switch, Timer=Timer, UART=UART, RTC=RTC,
                  ADC=ADC, millis=millis, micros=micros, elapsed_millis=elapsed_millis,
                  elapsed_micros=elapsed_micros, delay=delay, udelay=udelay, freq=freq,
                  unique_id=unique_id, usb_mode=usb_mode, sync=sync, disable_irq=disable_irq,
                  enable_irq=enable_irq, wfi=wfi)
    machine = _module("machine", Pin=Pin, UART=UART, RTC=RTC, ADC=MachineADC, freq=freq,
                      unique_id=unique_id, mem8=mem8, mem16=mem16, mem32=mem32,
                      disable_irq=disable_irq, enable_irq=enable_irq, idle=idle,
                      PWRON_RESET=1, HARD_RESET=2, WDT_RESET=3, DEEPSLEEP_RESET=4,
                      SOFT_RESET=0, reset_cause=lambda: 1)
    stm = _module("stm", mem8=mem8, mem16=mem16, mem32=mem32, **STM_CONSTANTS)
    sys.modules["pyb"] = pyb
    sys.modules["machine"] = machine
    sys.modules["stm"] = stm
    sys.modules["time"] = _Time
    sys.modules["utime"] = _Time
    thread = (getattr(hw, "profile", None) or {}).get("thread", "gil")
    if thread == "gil":
        sys.modules["_thread"] = _Thread
    if not hasattr(micropython, "alloc_emergency_exception_buf"):
        # the stm32 port has it (py/modmicropython.c, MICROPY_ENABLE_EMERGENCY_EXCEPTION_BUF),
        # the unix port not
        mp = _module("micropython", alloc_emergency_exception_buf=_emergency_buf)
        for k in dir(micropython):
            if not k.startswith("__"):
                setattr(mp, k, getattr(micropython, k))
        sys.modules["micropython"] = mp
    return pyb


def _emergency_buf(size):
    pass


class _Module:
    pass


def _module(name, **names):
    m = _Module()
    m.__name__ = name
    for k, v in names.items():
        setattr(m, k, v)
    return m
