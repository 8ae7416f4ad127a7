# STM32F4 drivers below MicroPython's own, through stm.mem32 (register map and bits: ST's
# RM0090, rev 19; docs/hardware.md, "The Pyboard below MicroPython's drivers"):
#   DmaAdc      V and I sampled by hardware alone: a timer triggers two ADCs at once, two DMA
#               streams write their conversions into rings, a second timer counts the triggers.
#               Nothing of it needs the CPU, so sampling goes on while a flash erase stalls it.
#   BackupSram  the 4 KiB backup SRAM, kept on VBAT across power cuts: board.nvram.
# Deployed as board/stm32f4.py; a board with another STM32F4 (a Nucleo-F4) uses it unchanged.
# The registers' set-up is in board/stm32f4_setup.py (run at boot: in RAM only while it runs).
import stm


def _setup(fn, *args):
    # The registers' set-up (board/stm32f4_setup.py): at boot, and again after a DMA stream
    # stopped; its code is in RAM only while it runs (lib/lazy.py; docs/hardware.md "Memory")
    import lazy

    lazy.call("board.stm32f4_setup", fn, *args)


class DmaAdc:
    # read_into(v_buf, i_buf) -> n: the samples taken since the previous call, oldest first, as
    # many as the buffers hold (the rest wait for the next call). A consumer that comes back
    # later than the ring lasts (ring / rate seconds) has lost the oldest: that is a gap,
    # counted in `gaps` (events) and `lost` (samples), never bridged silently.
    # Set by board/stm32f4_setup.py (annotations only: MicroPython compiles them to nothing)
    _ring: int
    _span: int
    _keep: int
    _taken: int
    _a_ndtr_v: int
    _a_ndtr_i: int
    _a_cnt: int
    _mv_v: memoryview
    _mv_i: memoryview
    gaps: int
    lost: int
    restarts: int

    def __init__(self, pin_v, ch_v, pin_i, ch_i, rate, ring):
        _setup("adc", self, pin_v, ch_v, pin_i, ch_i, rate, ring)

    def _start(self):
        # the timers, ADCs and DMA streams set up (again, after a stream stopped)
        _setup("start", self)

    def read_into(self, v_buf, i_buf):
        m = stm.mem32
        ring = self._ring
        # the streams' positions first, then the count: the count is never behind them
        wv = (ring - m[self._a_ndtr_v]) % ring
        wi = (ring - m[self._a_ndtr_i]) % ring
        c = m[self._a_cnt]
        # a conversion may still be in flight (the count leads by a trigger or two); a stream
        # that fell further behind has stopped: set it all up again, and count what is lost
        lag = max((c - wv) % ring, (c - wi) % ring)
        if lag > ring // 4:
            self.gaps += 1
            self.lost += (c - self._taken) % self._span
            self.restarts += 1
            self._start()
            return 0
        done = (c - lag) % self._span
        new = (done - self._taken) % self._span
        if new > self._keep:
            self.gaps += 1
            self.lost += new - self._keep
            self._taken = (done - self._keep) % self._span
            new = self._keep
        n = min(new, len(v_buf), len(i_buf))
        if not n:
            return 0
        k = self._taken % ring
        a = min(n, ring - k)  # up to the ring's end, then from its start
        vb = memoryview(v_buf)
        ib = memoryview(i_buf)
        vb[0:a] = self._mv_v[k:k + a]
        ib[0:a] = self._mv_i[k:k + a]
        if a < n:
            vb[a:n] = self._mv_v[0:n - a]
            ib[a:n] = self._mv_i[0:n - a]
        self._taken = (self._taken + n) % self._span
        return n


class BackupSram:
    # board.nvram: the STM32F4's 4 KiB backup SRAM (0x40024000, RM0090 2.3 and 5.1.2): its
    # clock on, the backup domain's write protection off, and the backup regulator on, so that
    # VBAT keeps it across power cuts (a coin cell on the Pyboard's VBAT pin).
    size = 4096
    _base: int  # set by board/stm32f4_setup.py

    def __init__(self):
        _setup("sram", self)

    def _check(self, off, n):
        if off < 0 or n < 0 or off + n > 4096:
            raise ValueError("nvram: %d bytes at %d do not fit in 4096" % (n, off))

    def read(self, off, n):
        self._check(off, n)
        out = bytearray(n)
        a = self._base + off
        m = stm.mem8
        for k in range(n):
            out[k] = m[a + k]
        return bytes(out)

    def write(self, off, data):
        self._check(off, len(data))
        a = self._base + off
        m = stm.mem8
        for k in range(len(data)):
            m[a + k] = data[k]
