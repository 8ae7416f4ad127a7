# Models of the rp2 port's hardware modules for the virtual board (profiles rp2-pico,
# rp2-pico2): `machine`, `rp2` and `_thread` as MicroPython's rp2 port has them, so that
# board/rp2_pico and board/rp2_pico2 run unchanged on the unix VM. ROM-side: never flashed.
# The ROM calls install(hw) after mounting the filesystem, before boot.py
# (/work/wt/_notes/PROFILE_SCHEMA.md); the models reach the virtual hardware only through hw.
#
# These are the only mocks the project allows: each follows the official port's API exactly
# (signatures, keywords, constants, errors; a keyword the port lacks is a TypeError, as the
# port's argument parser raises). Sources, MicroPython v1.28.0 (the same in v1.26.0 unless
# said), and pico-sdk 2.2.0 (a1438df, v1.28.0's lib/pico-sdk):
#   machine.Pin     ports/rp2/machine_pin.c (make_new/init args: mode, pull, *, value, alt;
#                   IN 0, OUT 1, OPEN_DRAIN 2, ALT 3, PULL_UP 1, PULL_DOWN 2; errors
#                   "invalid pin", 'unknown named pin "%s"'); boards/RPI_PICO{,2}/pins.csv
#                   (GP0..GP22, GP25..GP28, LED = GPIO25)
#   machine.ADC     ports/rp2/machine_adc.c (ADC(id) takes one argument and no keyword;
#                   an int 0..4 is a channel, else a pin 26..29; read_u16 scales the 12-bit
#                   result as raw << 4 | raw >> 8; CORE_TEMP = 4 = NUM_ADC_CHANNELS - 1)
#   machine.Timer   ports/rp2/machine_timer.c (id -1 only: "Timer doesn't exist"; keyword-only
#                   mode, callback, period, tick_hz, freq, hard: hard= exists from v1.26)
#   machine.UART    ports/rp2/machine_uart.c (ids 0, 1; IS_VALID_TX/RX pins; txbuf/rxbuf
#                   32..32766, default 256; write() puts what fits into the tx ring buffer and
#                   busy-waits for room for the rest: it blocks at the baud rate)
#   machine.RTC     ports/rp2/machine_rtc.c, main.c: the AON timer is started at
#                   2021-01-01 00:00:00 at every power-up; a Pico has no battery for it, so a
#                   power cut loses the time (the VM starting = a power-up)
#   machine.freq/unique_id/reset/soft_reset/mem32  ports/rp2/modmachine.c, extmod/modmachine.c
#   rp2.DMA         ports/rp2/rp2_dma.c (config/active/irq/close/pack_ctrl/unpack_ctrl, the
#                   read/write/count/ctrl/channel attributes, the CTRL field table; RP2350
#                   adds inc_read_rev/inc_write_rev and moves the fields)
#   _thread         ports/rp2/mpthreadport.c: no GIL (mpconfigport.h MICROPY_PY_THREAD_GIL 0),
#                   one extra thread on core 1 ("core1 in use" OSError for a second one), its
#                   stack (default 4096, at least 2048 bytes) allocated from the GC heap
#   registers       pico-sdk src/rp20x0/hardware_regs/include/hardware/regs/{addressmap,adc,
#                   dma,dreq}.h: ADC_BASE 0x4004c000 (RP2040) / 0x400a0000 (RP2350), DMA_BASE
#                   0x50000000, DREQ_ADC 36 / 48, ADC CS/FCS/FIFO/DIV, the DMA channel's 16
#                   registers (stride 0x40); TRANS_COUNT is reloaded at each trigger
#                   (dma.h: "Writing this register sets the RELOAD value")
# The ADC is free-running as on the chip: with CS.START_MANY a conversion every
# (1 + DIV.INT + DIV.FRAC/256) cycles of the 48 MHz ADC clock (at least 96; hardware_adc adc.h),
# round robin over CS.RROBIN from CS.AINSEL, into the FIFO; a DMA channel paced by DREQ_ADC
# moves them. The DMA is modelled lazily: whenever the program looks (a DMA register, an ADC
# register), every conversion the elapsed board time holds is delivered at once, so the DMA
# keeps running through flash stalls (hw.stalls) as on the chip: no sample is lost there. A
# whole round-robin cycle reads one sample k of the supervisor's ring (the front end's V and I
# of that instant). Unpaced channels (treq_sel 0x3f) run at once when triggered: memory to
# memory, or into another channel's registers (the four aliases; a *_TRIG alias starts it),
# with ring_size wrapping the selected address as the hardware does. A DMA transfer to an
# address that no buffer or register model covers sets the channel's write_err and stops it,
# as a bus error does. Buffers get addresses in the RP2040's SRAM range (0x20000000: the VM is
# 64-bit). `time` is replaced too: time()/gmtime()/localtime()/mktime() read the RTC model, as
# on the port (its AON timer). The models run in the firmware's VM and use its heap: the
# lazy fill allocates two small arrays per DMA block, nothing per sample.
#
# What the ROM must do (PROFILE_SCHEMA.md): set hw.profile, then install(hw) before boot.py.
# Import this module while the ROM image is still mounted (rom.py boot() unmounts /_rom first
# thing). machine.reset()/soft_reset() send {"ev": "reset", "kind": "hard"|"soft"} and raise
# SystemExit (the port's soft_reset is sys.exit, extmod/modmachine.c): the supervisor
# restarts the VM on that event (a hard reset is a power-up for the RTC model).
import sys
import time
from array import array

import _thread as _vm_thread
import uctypes

_hw = None
_CHIP = "RP2040"
_ADC_BASE = 0x4004C000
_DMA_BASE = 0x50000000
_DREQ_ADC = 36
_NUM_DMA = 12
_TREQ_PERMANENT = 0x3F
_ADC_CLK = 48000000
# board address -> (length in bytes, VM address, the object): what a DMA may reach. The object
# is kept alive: on a board, a buffer the GC frees under a running DMA is memory corrupted; here
# the VM's heap must not be.
_MEM = {}

_READ_ONLY = ("busy", "ahb_err")


def _fields(rp2350):
    # (name, shift, length), in rp2_dma.c's table order (pico-sdk regs/dma.h LSBs)
    if rp2350:
        return (("enable", 0, 1), ("high_pri", 1, 1), ("size", 2, 2), ("inc_read", 4, 1),
                ("inc_read_rev", 5, 1), ("inc_write", 6, 1), ("inc_write_rev", 7, 1),
                ("ring_size", 8, 4), ("ring_sel", 12, 1), ("chain_to", 13, 4),
                ("treq_sel", 17, 6), ("irq_quiet", 23, 1), ("bswap", 24, 1),
                ("sniff_en", 25, 1), ("busy", 26, 1), ("write_err", 29, 1), ("read_err", 30, 1),
                ("ahb_err", 31, 1))
    return (("enable", 0, 1), ("high_pri", 1, 1), ("size", 2, 2), ("inc_read", 4, 1),
            ("inc_write", 5, 1), ("ring_size", 6, 4), ("ring_sel", 10, 1), ("chain_to", 11, 4),
            ("treq_sel", 15, 6), ("irq_quiet", 21, 1), ("bswap", 22, 1), ("sniff_en", 23, 1),
            ("busy", 24, 1), ("write_err", 29, 1), ("read_err", 30, 1), ("ahb_err", 31, 1))


_FIELDS = _fields(False)
_F = {}  # name -> (shift, mask)


def _field(ctrl, name):
    s, m = _F[name]
    return (ctrl >> s) & m


def _addr_of(obj, writable):
    # rp2_dma.c rp2_dma_register_value_from_obj: a buffer gives its address, else an int.
    # The VM is 64-bit and a board 32-bit: a buffer gets an address in the RP2040's SRAM
    # range (0x20000000), which _mem_view maps back to the object.
    global _next_addr
    if isinstance(obj, int):
        return obj & 0xFFFFFFFF
    if writable and isinstance(obj, (bytes, str)):
        raise TypeError("object with buffer protocol required")
    real = uctypes.addressof(obj)
    n = len(memoryview(obj)) * _itemsize(obj)
    for a, (size, r, _o) in _MEM.items():
        if r == real and size == n:
            _MEM[a] = (size, r, obj)
            return a
    a = _next_addr
    _next_addr += (n + 3) & ~3
    _MEM[a] = (n, real, obj)
    return a


_next_addr = 0x20000000


def _itemsize(obj):
    t = str(type(obj))
    if "array" in t and "bytearray" not in t:
        return {"b": 1, "B": 1, "h": 2, "H": 2, "i": 4, "I": 4, "l": 4, "L": 4, "q": 8, "Q": 8,
                "f": 4, "d": 8}[str(obj)[7]]
    return 1


def _mem_view(addr, n):
    # n bytes at board address addr, if one known buffer holds them all
    for a, (size, real, _obj) in _MEM.items():
        if a <= addr and addr + n <= a + size:
            return uctypes.bytearray_at(real + addr - a, n)
    return None


# --- the ADC (ADC_BASE: CS 0x00, RESULT 0x04, FCS 0x08, FIFO 0x0c, DIV 0x10) ---------------

class _AdcModel:
    def __init__(self):
        self.cs = 0
        self.fcs = 0
        self.div = 0
        self.fifo = []
        self.over = 0
        self.conv = 0  # conversions since START_MANY was set
        self.t0 = 0
        self.k0 = 0  # the ring sample of the first conversion
        self.seq = (0,)
        self.temp_on = 0
        self.lost = 0

    def period_cycles256(self):
        # (1 + INT + FRAC/256) ADC clocks, at least 96 (a conversion): in 1/256 cycles
        p = 256 + (self.div >> 8 & 0xFFFF) * 256 + (self.div & 0xFF)
        return p if p >= 96 * 256 else 96 * 256

    def running(self):
        return self.cs & 1 and self.cs & 8

    def start(self):
        # The round robin: the first conversion is CS.AINSEL's, then the enabled channels of
        # CS.RROBIN in turn (the cycle taken as starting at AINSEL, which the adapter enables).
        n = 9 if _CHIP == "RP2350" else 5
        a = (self.cs >> 12) & (0xF if _CHIP == "RP2350" else 0x7)
        rr = (self.cs >> 16) & ((1 << n) - 1)
        on = [c for c in range(n) if rr >> c & 1]
        if a in on:
            i = on.index(a)
            self.seq = tuple(on[i:] + on[:i])
        else:
            self.seq = (a,)
        self.conv = 0
        self.t0 = time.ticks_us()
        self.k0 = _ring_now()

    def due(self):
        # conversions that board time holds now (and the supervisor has written)
        if not self.running():
            return self.conv
        dt = time.ticks_diff(time.ticks_us(), self.t0)
        n = dt * _ADC_CLK * 256 // (1000000 * self.period_cycles256())
        written, rate, _lead, _size = _hw.adc_head()
        cyc = len(self.seq)
        # no further than the front end has written: cycle q reads sample
        # k0 + floor(q * d / c) (ring_k), which exists while q * d < (written - k0) * c
        d = cyc * self.period_cycles256() * rate
        c = _ADC_CLK * 256
        lim = ((written - self.k0) * c + d - 1) // d * cyc
        return n if n < lim else lim

    def ring_k(self, i, rate):
        # the front end's sample that conversion i reads: its round-robin cycle's instant
        cyc = len(self.seq)
        return self.k0 + (i // cyc) * cyc * self.period_cycles256() * rate // (_ADC_CLK * 256)

    def fill(self, i, out, n):
        # the raw 12-bit results of conversions i .. i+n-1 into out[0:n]
        written, rate, _lead, size = _hw.adc_head()
        k_lo = self.ring_k(i, rate)
        m = self.ring_k(i + n - 1, rate) - k_lo + 1
        if m <= _RING_SCRATCH:
            vb, ib = _ring_v, _ring_i  # the front end's samples: no block of the firmware's heap
        else:  # a conversion far slower than the front end spans many of its samples
            vb = array("H", bytes(2 * m))
            ib = array("H", bytes(2 * m))
        if k_lo >= written - size:
            _hw.adc_read(k_lo, m, vb, ib)
        else:  # older samples are gone from the front end's ring: read as 0
            for j in range(m):
                vb[j] = 0
                ib[j] = 0
        if self.seq == (0, 1) and 2 * self.period_cycles256() * rate == _ADC_CLK * 256:
            # V, I at the front end's own rate (the adapters' set-up): one sample a cycle
            t = q = 0
            if i & 1:
                out[0] = ib[0] >> 4
                t = q = 1
            if _interleave is not None and n - t > 1:
                pairs = (n - t) >> 1
                _interleave(memoryview(out)[t:], memoryview(vb)[q:], memoryview(ib)[q:], pairs)
                t += 2 * pairs
                q += pairs
            while t + 1 < n:
                out[t] = vb[q] >> 4
                out[t + 1] = ib[q] >> 4
                t += 2
                q += 1
            if t < n:
                out[t] = vb[q] >> 4
            return
        cyc = len(self.seq)
        for j in range(n):
            c = i + j
            ch = self.seq[c % cyc]
            if ch == 0:
                out[j] = vb[self.ring_k(c, rate) - k_lo] >> 4
            elif ch == 1:
                out[j] = ib[self.ring_k(c, rate) - k_lo] >> 4
            elif ch == 4:
                out[j] = 876 if self.temp_on else 0  # 0.706 V: 27 C (RP2040 datasheet 4.9.5)
            else:
                out[j] = 0

    def reg_read(self, off):
        _advance()
        if off == 0x00:
            return self.cs | (0x100 if self.cs & 1 else 0)  # READY
        if off == 0x04:
            return self.fifo[-1] if self.fifo else 0
        if off == 0x08:
            n = len(self.fifo)
            return (self.fcs & 0x0F00000F) | (n << 16) | (0x100 if not n else 0) \
                | (0x200 if n >= 4 else 0) | (0x800 if self.over else 0)
        if off == 0x0C:
            return self.fifo.pop(0) if self.fifo else 0
        if off == 0x10:
            return self.div
        raise ValueError("port_rp2: no model of ADC register +0x%02x" % off)

    def reg_write(self, off, v):
        _advance()
        if off == 0x00:
            was = self.running()
            self.cs = v & 0x01FFF60F
            self.temp_on = self.cs >> 1 & 1
            if self.cs & 4:  # START_ONCE: one conversion, not modelled into the FIFO here
                self.cs &= ~4
            if self.running() and not was:
                self.start()
        elif off == 0x08:
            if v & 0x800:
                self.over = 0  # OVER: write 1 to clear
            self.fcs = v & 0x0F00000F
        elif off == 0x10:
            self.div = v & 0xFFFFFF
        elif off != 0x04 and off != 0x0C:
            raise ValueError("port_rp2: no model of ADC register +0x%02x" % off)


_adc = _AdcModel()

# The model's own buffers, made at install() before the ROM weighs its ballast: a board's ADC
# and DMA move the conversions without the CPU, and the model, which does it in Python, made
# each pass's values and the front end's samples anew in the firmware's heap (4 KB a pass at
# 1,024 conversions, ~16 KB a second at 4 kHz: garbage a Pico never makes, collected in the
# firmware's time). _STEP conversions a pass at most; the samples they span in the front
# end's ring (up to _RING_SCRATCH: one more than the pairs of two channels, or one channel at
# the ring's rate).
_RING_SCRATCH = 1026
_ring_v = None
_ring_i = None
_pass_vals = {}  # DMA transfer size (1, 2, 4) -> an array of _STEP values

# The (V, I) pairs into the conversions' order in native code (the same values as fill's loop,
# which stays the fallback): 8,000 conversions a second at 4 kHz were that loop's, a third to a
# half of an idle rp2-pico meter's metrology time on this VM (docs/BENCH-sim.md, "Idle cost").
# Compiled by install() from this text: the ROM image is bytecode (mpy-cross without -march),
# the unix VM compiles viper (MICROPY_EMIT_X64) and keeps the machine code outside the GC heap
# (ports/unix/alloc.c, v1.28.0).
_interleave = None
_INTERLEAVE = """
@micropython.viper
def interleave(out: ptr16, vb: ptr16, ib: ptr16, pairs: int):
    j = 0
    k = 0
    while k < pairs:
        out[j] = vb[k] >> 4
        out[j + 1] = ib[k] >> 4
        j += 2
        k += 1
"""


def _ring_now():
    # the supervisor ring's sample of this instant (as board/virtual's _Adc)
    written, _rate, lead, _size = _hw.adc_head()
    return written - lead if written > lead else 0


# --- the DMA ------------------------------------------------------------------------------

class _Channel:
    def __init__(self, n):
        self.n = n
        self.claimed = False
        self.read = 0
        self.write = 0
        self.count = 0  # live transfer counter
        self.reload = 0
        self.ctrl = 0
        self.busy = False
        self.obj = None
        self.irq = None

    def trigger(self):
        self.count = self.reload
        if _field(self.ctrl, "enable"):
            self.busy = self.count > 0
            if self.busy and _field(self.ctrl, "treq_sel") == _TREQ_PERMANENT:
                self.run_free()

    def finish(self):
        self.busy = False
        if self.irq is not None and self.irq[0] is not None and not _field(self.ctrl, "irq_quiet"):
            # the channel's IRQ (rp2_dma_irq_handler): hard runs at once, soft is scheduled
            self.irq[2] = 1
            h = self.irq[0]
            if self.irq[1]:
                h(self.obj)
            else:
                import micropython

                micropython.schedule(h, self.obj)
        c = _field(self.ctrl, "chain_to")
        if c != self.n:
            _chan[c].trigger()

    def err(self):
        self.ctrl |= 1 << _F["write_err"][0] | 1 << 31
        self.busy = False

    def run_free(self):
        # an unpaced channel: every transfer at once (memory or DMA registers)
        size = 1 << _field(self.ctrl, "size")
        while self.busy and self.count:
            src = _mem_view(self.read, size)
            if src is None:
                self.ctrl |= 1 << _F["read_err"][0] | 1 << 31
                self.busy = False
                return
            val = int.from_bytes(bytes(src), "little")
            if _DMA_BASE <= self.write < _DMA_BASE + 0x40 * _NUM_DMA:
                ch = _chan[(self.write - _DMA_BASE) >> 6]
                ch.reg_write((self.write - _DMA_BASE) & 0x3F, val)
            else:
                dst = _mem_view(self.write, size)
                if dst is None:
                    self.err()
                    return
                dst[0:size] = val.to_bytes(size, "little")
            self.count -= 1
            # ring_size: the selected address wraps at a 2**ring_size-byte boundary
            ring = _field(self.ctrl, "ring_size")
            wrap = (1 << ring) - 1 if ring else 0xFFFFFFFF
            sel = _field(self.ctrl, "ring_sel")
            if _field(self.ctrl, "inc_read"):
                r = self.read + size
                self.read = (self.read & ~wrap) | (r & wrap) if not sel else r
            if _field(self.ctrl, "inc_write"):
                w = self.write + size
                self.write = (self.write & ~wrap) | (w & wrap) if sel else w
        if self.busy:
            self.finish()

    def reg_write(self, off, v):
        # the four register aliases of a channel (regs/dma.h CH0_*_OFFSET); *_TRIG starts it
        reg, trig = _ALIASES[off >> 2]
        if reg == "read":
            self.read = v
        elif reg == "write":
            self.write = v
        elif reg == "count":
            self.reload = v
        else:
            self.ctrl = v & ~(1 << _F["busy"][0])
        if trig:
            if reg == "ctrl" or v:  # a null trigger write halts a chain instead
                self.trigger()


_ALIASES = (("read", 0), ("write", 0), ("count", 0), ("ctrl", 1),
            ("ctrl", 0), ("read", 0), ("write", 0), ("count", 1),
            ("ctrl", 0), ("count", 0), ("read", 0), ("write", 1),
            ("ctrl", 0), ("write", 0), ("count", 0), ("read", 1))
_chan = []
_advancing = False
_STEP = 1024  # conversions the model delivers per pass of _advance


def _advance():
    # deliver every conversion due by now: into the FIFO, drained by the ADC-paced channel
    global _advancing
    if _advancing or not _adc.running():
        return
    _advancing = True
    try:
        due = _adc.due()
        while _adc.conv < due:
            ch = None
            if _adc.fcs & 1 and _adc.fcs & 8:  # FCS.EN, FCS.DREQ_EN
                for c in _chan:
                    if c.busy and _field(c.ctrl, "treq_sel") == _DREQ_ADC:
                        ch = c
                        break
            n = due - _adc.conv
            if ch is None:
                # nobody drains the FIFO: it keeps its first 4 and flags the overflow
                if _adc.fcs & 1:
                    k = 4 - len(_adc.fifo)
                    if k > 0:
                        vals = array("H", bytes(2 * min(n, k)))
                        _adc.fill(_adc.conv, vals, len(vals))
                        _adc.fifo.extend(vals)
                    if n > k:
                        _adc.over = 1
                _adc.lost += n
                _adc.conv = due
                break
            m = n if n < ch.count else ch.count
            # at most _STEP conversions a pass: a caller back after seconds would otherwise
            # need one block of the whole backlog (16 KB after 17 s at 4 kHz) on the VM's heap
            m = m if m < _STEP else _STEP
            if _field(ch.ctrl, "ring_size"):
                raise ValueError("port_rp2: no model of ring_size on a DREQ-paced channel")
            size = 1 << _field(ch.ctrl, "size")
            inc = _field(ch.ctrl, "inc_write")
            span = size * m if inc else size
            dst = _mem_view(ch.write, span)
            if dst is None or ch.read != _ADC_BASE + 0x0C:
                ch.err()
                continue
            vals = _pass_vals[size]
            _adc.fill(_adc.conv, vals, m)
            if inc:
                dst[0:span] = uctypes.bytearray_at(uctypes.addressof(vals), span)
                ch.write += span
            else:
                dst[0:size] = uctypes.bytearray_at(uctypes.addressof(vals) + size * (m - 1), size)
            ch.count -= m
            _adc.conv += m
            if not ch.count:
                ch.finish()
    finally:
        _advancing = False


class DMA:
    def __init__(self):
        for c in _chan:
            if not c.claimed:
                c.claimed = True
                c.obj = self
                c.read = c.write = c.count = c.reload = c.ctrl = 0
                c.busy = False
                self._c = c
                return
        raise OSError(16)  # MP_EBUSY

    def _ch(self):
        if self._c is None:
            raise ValueError("channel closed")
        _advance()
        return self._c

    def __repr__(self):
        return "DMA(%u)" % self.channel

    @property
    def channel(self):
        return 0xFF if self._c is None else self._c.n

    @property
    def read(self):
        return self._ch().read

    @read.setter
    def read(self, v):
        self._ch().read = _addr_of(v, False)

    @property
    def write(self):
        return self._ch().write

    @write.setter
    def write(self, v):
        self._ch().write = _addr_of(v, True)

    @property
    def count(self):
        return self._ch().count

    @count.setter
    def count(self, v):
        self._ch().reload = int(v) & 0xFFFFFFFF

    @property
    def ctrl(self):
        c = self._ch()
        return c.ctrl | (1 << _F["busy"][0] if c.busy else 0)

    @ctrl.setter
    def ctrl(self, v):
        self._ch().ctrl = int(v) & 0xFFFFFFFF

    def config(self, *, read=None, write=None, count=None, ctrl=None, trigger=False):
        c = self._ch()
        if read is not None:
            c.read = _addr_of(read, False)
        if write is not None:
            c.write = _addr_of(write, True)
        if count is not None:
            c.reload = int(count) & 0xFFFFFFFF
        if ctrl is not None:
            c.ctrl = int(ctrl) & 0xFFFFFFFF
        if trigger:
            c.trigger()

    def active(self, value=None):
        c = self._ch()
        if value is not None:
            if value:
                c.trigger()
            else:
                c.busy = False  # dma_channel_abort
        return c.busy

    def irq(self, handler=None, hard=False):
        c = self._ch()
        if c.irq is None:
            c.irq = [None, False, 0]
        c.irq[0] = handler
        c.irq[1] = bool(hard)
        c.irq[2] = 0
        return _DmaIrq(c)

    def close(self):
        c = self._c
        if c is not None:
            c.ctrl = c.read = c.write = c.reload = c.count = 0
            c.busy = False
            c.irq = None
            c.claimed = False
            c.obj = None
            self._c = None

    __del__ = close

    def pack_ctrl(self, *args, default=None, **kw):
        if args:
            raise TypeError("pack_ctrl only takes keyword arguments")
        if default is None:
            v = (1 << _F["irq_quiet"][0]) | (_TREQ_PERMANENT << _F["treq_sel"][0]) \
                | (1 << _F["inc_write"][0]) | (1 << _F["inc_read"][0]) \
                | (2 << _F["size"][0]) | 1 | ((self.channel & 0xF) << _F["chain_to"][0])
        else:
            v = int(default) & 0xFFFFFFFF
        for name, fv in kw.items():
            if name not in _F:
                raise TypeError()
            if name in _READ_ONLY:
                continue
            s, m = _F[name]
            fv = int(fv)
            if fv & m != fv:
                raise ValueError("bad field value")
            v = (v & ~(m << s)) | (fv << s)
        return v

    @staticmethod
    def unpack_ctrl(value):
        value = int(value)
        return {name: (value >> s) & ((1 << n) - 1) for name, s, n in _FIELDS}


class _DmaIrq:
    def __init__(self, c):
        self._c = c

    def flags(self):
        return self._c.irq[2] if self._c.irq else 0

    def trigger(self):
        return 0


class _Rp2:
    DMA = DMA

    @staticmethod
    def bootsel_button():
        return 0  # the BOOTSEL button is not pressed


# --- machine ------------------------------------------------------------------------------

_LEVEL = {}  # gpio -> output latch
_MODE = {}  # gpio -> mode
_PULL = {}
_PINS = []  # gpio -> its Pin
_WIRED_OUT = {15: "relay", 25: "led"}  # board/rp2_pico's pin map


def _pin_id(id):
    if isinstance(id, Pin):
        return id.id
    if isinstance(id, str):
        names = {"LED": 25}
        for g in range(29):
            if g not in (23, 24):
                names["GP%d" % g] = g
        if id not in names:
            raise ValueError('unknown named pin "%s"' % id)
        return names[id]
    if isinstance(id, int) and 0 <= id < (48 if _CHIP == "RP2350B" else 30):
        return id
    raise ValueError("invalid pin")


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    ALT = 3
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 8
    IRQ_FALLING = 4
    ALT_SPI = 1
    ALT_UART = 2
    ALT_I2C = 3
    ALT_PWM = 4
    ALT_SIO = 5
    ALT_PIO0 = 6
    ALT_PIO1 = 7
    ALT_GPCK = 8
    ALT_USB = 9

    def __new__(cls, id, *args, **kw):
        # A board's pins are static objects (ports/rp2/machine_pin.c mp_pin_make_new,
        # machine_pin_find; v1.28.0): Pin() returns the one asked for, the same each time, and
        # takes no heap. They and their state are made at install, before the ballast.
        return _PINS[_pin_id(id)]

    def __init__(self, id, mode=None, pull=None, *, value=None, alt=5):
        if mode is not None or pull is not None or value is not None:
            self.init(mode, pull, value=value, alt=alt)

    def __repr__(self):
        return "Pin(GPIO%d)" % self.id

    def init(self, mode=None, pull=None, *, value=None, alt=5):
        # value= sets the output latch before the mode: an output starts at that level
        g = self.id
        if value is not None:
            _LEVEL[g] = 1 if value else 0
        if mode is not None:
            if int(mode) not in (0, 1, 2, 3):
                raise ValueError("invalid pin mode: %d" % mode)
            _MODE[g] = int(mode)
        if pull is not None:
            _PULL[g] = int(pull)
        if (mode is not None or value is not None) and _MODE.get(g) == Pin.OUT \
                and g in _WIRED_OUT:
            _hw.output(_WIRED_OUT[g], _LEVEL.get(g, 0))

    def _drive(self, v):
        g = self.id
        _LEVEL[g] = v
        if _MODE.get(g) == Pin.OUT and g in _WIRED_OUT:
            _hw.output(_WIRED_OUT[g], v)

    def value(self, *args):
        if len(args) > 1:
            raise TypeError("function takes at most 2 positional arguments")
        if args:
            self._drive(1 if args[0] else 0)
            return None
        g = self.id
        if _MODE.get(g, 0) == Pin.OUT:
            return _LEVEL.get(g, 0)
        _hw.poll()
        if g == 14:  # button to GND, pull-up: pressed reads 0
            return 0 if _hw.inputs.get("button") else 1
        if g == 13:  # tamper: a normally-closed loop to GND; open (tamper) reads 1
            return 1 if _hw.inputs.get("tamper") else 0
        if g == 12:  # the terminal cover's switch, closed to GND while the cover is on
            return (1 if _PULL.get(g) == Pin.PULL_UP else 0) if _hw.inputs.get("cover") else 0
        if g == 11:  # the service jumper to GND: fitted reads 0
            return 0 if _hw.inputs.get("jumper") else (1 if _PULL.get(g) == Pin.PULL_UP else 0)
        return 1 if _PULL.get(g) == Pin.PULL_UP else 0

    __call__ = value

    def on(self):
        self._drive(1)

    high = on

    def off(self):
        self._drive(0)

    low = off

    def toggle(self):
        self._drive(1 - _LEVEL.get(self.id, 0))

    def irq(self, handler=None, trigger=12, hard=False):
        return None


class ADC:
    CORE_TEMP = 4

    def __init__(self, id):
        if isinstance(id, int) and 0 <= id < 5:
            ch = id
        else:
            g = _pin_id(id)
            if not 26 <= g < 30:
                raise ValueError("Pin doesn't have ADC capabilities")
            ch = g - 26
        if not _adc.cs & 1:
            _adc.reg_write(0, 1)  # adc_init: CS.EN
        if ch == 4:
            _adc.temp_on = 1
            _adc.cs |= 2
        self._ch = ch

    def __repr__(self):
        return "<ADC channel=%u>" % self._ch

    def read_u16(self):
        # adc_config_and_read_u16: one conversion now, the 12-bit result scaled to 16 bits
        if self._ch == 4:
            raw = 876
        else:
            vb = array("H", [0])
            ib = array("H", [0])
            _hw.adc_read(_ring_now_by_time(), 1, vb, ib)
            raw = (vb[0] if self._ch == 0 else ib[0] if self._ch == 1 else 0) >> 4
        return raw << 4 | raw >> 8


_t_boot = 0
_k_boot = 0


def _ring_now_by_time():
    rate = _hw.adc_head()[1]
    k = _k_boot + time.ticks_diff(time.ticks_us(), _t_boot) * rate // 1000000
    w = _hw.adc_head()[0]
    return k if k < w else w - 1


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1, *, mode=1, callback=None, period=0xFFFFFFFF, tick_hz=1000,
                 freq=None, hard=False):
        if id != -1:
            raise ValueError("Timer doesn't exist")
        self._run = False
        if callback is not None or freq is not None or period != 0xFFFFFFFF:
            self.init(mode=mode, callback=callback, period=period, tick_hz=tick_hz, freq=freq,
                      hard=hard)

    def init(self, *, mode=1, callback=None, period=0xFFFFFFFF, tick_hz=1000, freq=None,
             hard=False):
        self.deinit()
        if freq is not None:
            delta = int(1000000 / freq)
        else:
            delta = period * 1000000 // tick_hz
        self._mode = mode
        self._cb = callback
        self._hard = bool(hard)
        self._delta = delta if delta > 0 else 1
        self._run = True
        self.lost = 0
        _vm_thread.start_new_thread(self._loop, ())

    def _loop(self):
        # An alarm interrupt: a hard callback runs at once, a soft one is scheduled
        # (mp_irq_dispatch). A tick due inside a flash stall that hw.stalls already records
        # when the tick is handled (a stall that held this thread too) is lost, as the CPU ran
        # no interrupt then; a stall still under way cannot be seen from here.
        import micropython

        due = time.ticks_add(time.ticks_us(), self._delta)
        while self._run:
            w = time.ticks_diff(due, time.ticks_us())
            if w > 0:
                time.sleep_us(w)
            if not self._run:
                break
            stalled = False
            for s, e in _hw.stalls:
                if time.ticks_diff(due, s) >= 0 and time.ticks_diff(e, due) > 0:
                    stalled = True
            if stalled:
                self.lost += 1
            elif self._cb is not None:
                try:
                    self._cb(self) if self._hard else micropython.schedule(self._cb, self)
                except Exception as ex:  # noqa: BLE001 - as the port: report, stop
                    print("uncaught exception in Timer(-1) callback")
                    sys.print_exception(ex)
                    break
            if self._mode == 0:
                break
            due = time.ticks_add(due, self._delta)
        self._run = False

    def deinit(self):
        self._run = False


class UART:
    INV_TX = 1
    INV_RX = 2
    CTS = 1
    RTS = 2

    def __init__(self, id, baudrate=-1, bits=-1, parity=-1, stop=-1, *, tx=None, rx=None,
                 cts=None, rts=None, timeout=-1, timeout_char=-1, invert=-1, flow=-1,
                 txbuf=-1, rxbuf=-1):
        if id not in (0, 1):
            raise ValueError("UART(%d) doesn't exist" % id)
        self._id = id
        self._baud = 115200
        self._bits = 8
        self._parity = None
        self._stop = 1
        self._txbuf = 256
        self._level = 0.0
        self._t = time.ticks_us()
        self._timeout = 0
        self._timeout_char = 0
        self.init(baudrate, bits, parity, stop, tx=tx, rx=rx, cts=cts, rts=rts, timeout=timeout,
                  timeout_char=timeout_char, invert=invert, flow=flow, txbuf=txbuf, rxbuf=rxbuf)

    def init(self, baudrate=-1, bits=-1, parity=-1, stop=-1, *, tx=None, rx=None, cts=None,
             rts=None, timeout=-1, timeout_char=-1, invert=-1, flow=-1, txbuf=-1, rxbuf=-1):
        if baudrate > 0:
            self._baud = baudrate
        if bits > 0:
            self._bits = bits
        if parity != -1:
            self._parity = parity
        if stop > 0:
            self._stop = stop
        rp2350 = _CHIP == "RP2350"
        for pin, kind in ((tx, 0), (rx, 1), (cts, 2), (rts, 3)):
            if pin is None:
                continue
            g = _pin_id(pin)
            ok = (g & 1) == kind if rp2350 and kind < 2 else (g & 3) == kind
            if not ok or (((g + 4) & 8) >> 3) != self._id:  # IS_VALID_TX/RX/CTS/RTS
                raise ValueError("bad %s pin" % ("TX", "RX", "CTS", "RTS")[kind])
        if timeout >= 0:
            self._timeout = timeout
        if timeout_char >= 0:
            self._timeout_char = timeout_char
        for n, name in ((txbuf, "txbuf"), (rxbuf, "rxbuf")):
            if n > 32766:
                raise ValueError("%s too large" % name)
        if txbuf > 0:
            self._txbuf = txbuf if txbuf >= 32 else 32

    def _drain(self):
        # the bytes the line has sent since the last look
        now = time.ticks_us()
        bits = 1 + self._bits + (0 if self._parity is None else 1) + self._stop
        self._level -= time.ticks_diff(now, self._t) * self._baud / (bits * 1000000)
        if self._level < 0:
            self._level = 0.0
        self._t = now

    def write(self, buf):
        data = bytes(buf)
        n = len(data)
        cap = self._txbuf + 32  # the ring buffer and the UART's 32-byte hardware FIFO
        self._drain()
        room = cap - self._level
        if n > room:
            # busy-wait until the rest fits, as mp_machine_uart_write does
            bits = 1 + self._bits + (0 if self._parity is None else 1) + self._stop
            time.sleep_us(int((n - room) * bits * 1000000 / self._baud) + 1)
            self._drain()
        self._level += n
        if self._id == 0:
            _hw.han_write(data)  # UART0 TX (GP0) is the HAN output
        return n

    def any(self):
        return 0  # nothing is wired to RX

    def read(self, nbytes=-1):
        return None

    def readinto(self, buf, nbytes=-1):
        return None

    def readline(self):
        return None

    def txdone(self):
        self._drain()
        return self._level <= 0

    def flush(self):
        self._drain()
        bits = 1 + self._bits + (0 if self._parity is None else 1) + self._stop
        if self._level > 0:
            time.sleep_us(int(self._level * bits * 1000000 / self._baud) + 1)
        self._level = 0.0

    def sendbreak(self):
        pass

    def deinit(self):
        pass

    def irq(self, handler=None, trigger=0, hard=False):
        return None


_EPOCH_2021 = 1609459200  # 2021-01-01 00:00:00 UTC: main.c starts the AON timer there


def _host_s():
    # the host's clock as the supervisor runs it (held, scaled), as board/virtual reads it
    m = _hw.meter
    t = m.get("sim_time")
    if t is not None:
        return t
    scale = m.get("time_scale", 1)
    t = _real_time.time()
    return t if scale == 1 else m.get("time_anchor", 0) + (t - m.get("time_anchor", 0)) * scale


def _days(y, m, d):
    # days since 1970-01-01 of a proleptic Gregorian date (timeutils' arithmetic)
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


class RTC:
    _offset = None  # board seconds - host seconds; None until the first power-up

    def __init__(self):
        if RTC._offset is None:
            # main() starts the RTC at 2021-01-01 after a chip reset (power, machine.reset());
            # a soft reset keeps it running (ports/rp2/main.c: before the soft-reset loop)
            if _hw.meter.get("cold", True):
                RTC._set(_EPOCH_2021)
            else:
                RTC._offset = int(_hw.meter.get("rtc_offset", 0))

    @staticmethod
    def _set(board_s):
        RTC._offset = board_s - int(_host_s())
        _hw.event({"ev": "rtc", "offset": RTC._offset})  # kept by the supervisor: soft resets

    def datetime(self, *args):
        if len(args) > 1:
            raise TypeError("function takes at most 2 positional arguments")
        if not args:
            g = _real_time.gmtime(_board_s())
            return (g[0], g[1], g[2], g[6], g[3], g[4], g[5], 0)
        t = tuple(args[0])
        if len(t) != 8:
            raise ValueError("requested length 8 but object has length %d" % len(t))
        # the weekday t[3] and the subseconds t[7] are ignored (machine_rtc.c)
        RTC._set(_days(t[0], t[1], t[2]) * 86400 + t[4] * 3600 + t[5] * 60 + t[6])
        return None


def _board_s():
    if RTC._offset is None:
        RTC()
    return int(_host_s()) + RTC._offset


class _Time:
    # time as the rp2 port has it: time()/gmtime()/localtime()/mktime() read the RTC (AON
    # timer; epoch 1970, mpconfigport.h MICROPY_EPOCH_IS_1970), ticks_* and sleep_* are the
    # VM's own.
    @staticmethod
    def time():
        return _board_s()

    @staticmethod
    def time_ns():
        return _board_s() * 1000000000

    @staticmethod
    def gmtime(secs=None):
        return _real_time.gmtime(_board_s() if secs is None else secs)

    localtime = gmtime

    @staticmethod
    def mktime(t):
        return _days(t[0], t[1], t[2]) * 86400 + t[3] * 3600 + t[4] * 60 + t[5]


for _n in ("ticks_us", "ticks_ms", "ticks_cpu", "ticks_diff", "ticks_add", "sleep"):
    setattr(_Time, _n, getattr(time, _n))
_real_time = time


def _sleep_ms(ms):
    # A board sleeps in WFE until an interrupt; the unix port's time.sleep_ms wakes every
    # 0.5 ms to poll for events instead (ports/unix MICROPY_INTERNAL_WFE), which cost an idle
    # meter on this profile a third of a host core. time.sleep is one select with the VM's
    # lock released, which a SIGINT ends as a board's Ctrl-C ends sleep_ms (board/virtual).
    _real_time.sleep(ms / 1000)


def _sleep_us(us):
    _real_time.sleep(us / 1000000)


_Time.sleep_ms = _sleep_ms
_Time.sleep_us = _sleep_us


class _Mem32:
    def __getitem__(self, addr):
        return self._reg(addr, None)

    def __setitem__(self, addr, v):
        self._reg(addr, int(v) & 0xFFFFFFFF)

    def _reg(self, addr, v):
        if addr & 3:
            raise ValueError("memory address not aligned to 4 bytes")
        base = addr & ~0x3000
        alias = addr & 0x3000  # 0x1000 XOR, 0x2000 SET, 0x3000 CLR (RP2040 datasheet 2.1.2)
        if _ADC_BASE <= base < _ADC_BASE + 0x24:
            off = base - _ADC_BASE
            if v is None:
                return _adc.reg_read(off)
            if alias:
                cur = _adc.reg_read(off) if off != 0x0C else 0
                v = cur ^ v if alias == 0x1000 else cur | v if alias == 0x2000 else cur & ~v
            _adc.reg_write(off, v)
            return None
        if _DMA_BASE <= addr < _DMA_BASE + 0x40 * _NUM_DMA and not alias:
            _advance()
            c = _chan[(addr - _DMA_BASE) >> 6]
            off = (addr - _DMA_BASE) & 0x3F
            if v is None:
                reg = _ALIASES[off >> 2][0]
                return {"read": c.read, "write": c.write, "count": c.count,
                        "ctrl": c.ctrl | (1 << _F["busy"][0] if c.busy else 0)}[reg]
            c.reg_write(off, v)
            return None
        raise ValueError("port_rp2: no model of register 0x%08x" % addr)


class _Machine:
    Pin = Pin
    ADC = ADC
    Timer = Timer
    UART = UART
    RTC = RTC
    mem32 = _Mem32()
    PWRON_RESET = 1
    WDT_RESET = 3

    @staticmethod
    def freq(*args):
        if args:
            raise ValueError("cannot change frequency")  # the model keeps the profile's clock
        return getattr(_hw, "profile", {}).get("cpu_hz", 150000000 if _CHIP == "RP2350"
                                               else 125000000)

    @staticmethod
    def unique_id():
        # 8 bytes (pico_unique_board_id_t), stable per meter
        import hashlib

        seed = str(_hw.meter.get("index", _hw.meter.get("id", 0))).encode()
        return hashlib.sha256(b"rp2-flash-id" + seed).digest()[:8]

    @staticmethod
    def reset_cause():
        return 1  # PWRON_RESET: the VM started from a power-up

    @staticmethod
    def reset():
        # A watchdog reboot (modmachine.c): nothing runs after it. The supervisor restarts
        # the VM (a hard reset; the RTC restarts at its default date); SystemExit ends the
        # running file meanwhile.
        _hw.event({"ev": "reset", "kind": "hard"})
        raise SystemExit

    @staticmethod
    def soft_reset():
        # extmod/modmachine.c: machine.soft_reset is sys.exit, which pyexec turns into a soft
        # reset on a board; the supervisor is told, as the unix VM's REPL would not reset
        _hw.event({"ev": "reset", "kind": "soft"})
        raise SystemExit

    @staticmethod
    def idle():
        time.sleep_ms(0)

    @staticmethod
    def disable_irq():
        return 0

    @staticmethod
    def enable_irq(state):
        return None

    @staticmethod
    def bootloader(value=None):
        _Machine.reset()


# --- _thread: core 1 --------------------------------------------------------------------------

class _Thread:
    LockType = _vm_thread.LockType
    allocate_lock = _vm_thread.allocate_lock
    exit = _vm_thread.exit
    _stack_size = 0
    _core1 = None  # the thread's stack (a heap object) while core 1 runs Python code

    @staticmethod
    def get_ident():
        # mp_thread_get_id: the core number + 1
        return 2 if _Thread._core1 is not None and _vm_thread.get_ident() == _Thread._core1_vm \
            else 1

    @staticmethod
    def stack_size(*args):
        r = _Thread._stack_size
        if args:
            _Thread._stack_size = int(args[0])
        return r

    @staticmethod
    def start_new_thread(function, args, *kwargs):
        if len(kwargs) > 1:
            raise TypeError("function takes at most 3 positional arguments")
        if _Thread._core1 is not None:
            raise OSError("core1 in use")
        if not isinstance(args, tuple):
            raise TypeError("expecting a tuple")
        n = _Thread._stack_size
        n = 4096 if n == 0 else 2048 if n < 2048 else n
        _Thread._core1 = bytearray(n // 4 * 4)  # m_new(uint32_t, ...): from the GC heap
        _Thread._core1_vm = None
        kw = kwargs[0] if kwargs else {}
        _vm_thread.start_new_thread(_core1_entry, (function, args, kw))
        return 2

    _core1_vm = None


def _core1_entry(function, args, kw):
    _Thread._core1_vm = _vm_thread.get_ident()
    try:
        function(*args, **kw)
    except SystemExit:
        pass
    except BaseException as e:  # noqa: BLE001 - as modthread.c: print and end the thread
        print("Unhandled exception in thread started by", function)
        sys.print_exception(e)
    finally:
        _Thread._core1 = None  # core1_entry = NULL: core 1 is free again


class _Micropython:
    # The unix build lacks the emergency exception buffer (MICROPY_ENABLE_EMERGENCY_EXCEPTION_BUF,
    # on in the rp2 port: py/modmicropython.c); the rest is the VM's own module.
    @staticmethod
    def alloc_emergency_exception_buf(size):
        return None


def _compile_interleave():
    global _interleave
    g = {}
    try:
        exec(_INTERLEAVE, g)
        _interleave = g["interleave"]
    except (SyntaxError, NameError):  # a VM without the native emitter: fill's loop
        _interleave = None


def install(hw):
    # Put the models into sys.modules under the names the port's modules have.
    global _hw, _CHIP, _ADC_BASE, _DREQ_ADC, _NUM_DMA, _FIELDS, _t_boot, _k_boot
    _hw = hw
    if _interleave is None:
        _compile_interleave()
    global _ring_v, _ring_i
    if _ring_v is None:
        _ring_v = array("H", bytes(2 * _RING_SCRATCH))
        _ring_i = array("H", bytes(2 * _RING_SCRATCH))
        for size in (1, 2, 4):
            _pass_vals[size] = array("BHI"[size >> 1], bytes(size * _STEP))
    if not hasattr(hw, "stalls"):
        hw.stalls = []
    machine_name = getattr(hw, "profile", {}).get("machine", "")
    rp2350 = "RP2350" in machine_name
    _CHIP = "RP2350" if rp2350 else "RP2040"
    _ADC_BASE = 0x400A0000 if rp2350 else 0x4004C000
    _DREQ_ADC = 48 if rp2350 else 36
    _NUM_DMA = 16 if rp2350 else 12
    _FIELDS = _fields(rp2350)
    _F.clear()
    for name, s, n in _FIELDS:
        _F[name] = (s, (1 << n) - 1)
    _chan[:] = [_Channel(i) for i in range(_NUM_DMA)]
    _t_boot = time.ticks_us()
    _k_boot = _ring_now()
    RTC._offset = None
    _LEVEL.clear()
    _MODE.clear()
    _PULL.clear()
    _PINS.clear()
    for g in range(48 if _CHIP == "RP2350B" else 30):
        _LEVEL[g], _MODE[g], _PULL[g] = 0, Pin.IN, None  # reset: an input, no pull
        p = object.__new__(Pin)
        p.id = g
        _PINS.append(p)
    import micropython

    for n in dir(micropython):
        if not n.startswith("__") and not hasattr(_Micropython, n):
            setattr(_Micropython, n, getattr(micropython, n))
    sys.modules["micropython"] = _Micropython
    sys.modules["machine"] = _Machine
    sys.modules["time"] = _Time
    sys.modules["utime"] = _Time
    sys.modules["rp2"] = _Rp2
    sys.modules["_thread"] = _Thread
