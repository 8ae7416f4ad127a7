# Metrology: samples V and I through the board's ADC at the board's rate,
# computes Vrms, Irms, P, S, PF and frequency every second, keeps the import
# and export energy registers, and closes each load-profile interval on the
# clock's boundary. The math lives in lib/metro.py (pure, tested on CPython
# and MicroPython); this module is the task around it.
import struct
from micropython import const

import lazy
import metro  # noqa: F401 - its Accumulator and Energy are made by boot_init.metrology
import store

ENERGY = "/data/energy.json"
CALIB = "/data/calib.json"
PROFILE = "/data/profile.bin"
PROFILE_CAP = const(192)  # two days of 15-minute intervals
PROFILE_REC = const(32)
_REC = ">IIIII"  # t_end, import mWh, export mWh, import Wh, export Wh
# With battery-backed RAM (hw["nvram"], a lib/nvrec.py Record) the commit point of a close is
# there: the energy state (metro.Energy.state), the new interval's index and the closed
# interval's record; the profile ring stages its records in RAM too (hw["profile_stage"]). Their
# flash copy is the RAM's snapshot (lib/nvrec.py Snapshots, where meter.py gives them), else
# energy.json is written when the ring flushes to its file (holding the RAM record's seq, "g":
# the boot takes the newer copy). Without nvram: energy.json at each close.
_NV = "<8Ii5I"
# Samples per channel per read: 256 ms at 4 kHz (the Picos and the virtual board).
# The step reads every 100 ms (meter.py: a read has a fixed cost, most of it on the virtual
# Pico's DMA model), so it may come 150 ms late before the virtual board's ADC loses any (a
# Pico's or Pyboard's DMA ring keeps 0.75-1.5 s). The Pyboard reads 256 (ADC_READ_MAX).
BUF = const(1024)


class Metrology:
    def __init__(self, port, hw):
        self._port = port
        # calibration, energy registers, load profile: read once, at boot, by code that is
        # in RAM only while it runs (boot_init.py)
        lazy.call("boot_init", "metrology", self, hw)

    def step(self):
        n = self._adc.read_into(self._vbuf, self._ibuf)
        if self._gaps and self._adc.last_gap and self.last is not None:
            # (before the first measured second the stream has not begun: nothing is missing)
            self._gap(self._adc.last_gap)
        if n:
            self._acc.feed(self._vbuf, self._ibuf, n)
        if self._acc.ready():
            r = self._acc.result()
            self.last = r
            self.seconds += 1
            self.energy.add(r[2], 1)
            # Each second, one way: the HAN data diode and prepaid credit (policy.py).
            s = (self._t, r[0], r[1], r[2], self.energy.import_wh, self.energy.export_wh)
            self._port.send("han", "reading", s)
            self._port.send("credit", "reading", s)

    def _gap(self, lost):
        # The time the lost samples spanned, at the power of the last complete second, so the
        # interval neither loses nor invents energy silently; the close log line says how much
        # of it was estimated.
        self.gap_samples += lost
        self._gap_interval += lost
        self.energy.add(self.last[2], lost / self._rate)

    def _close(self, idx):
        imp, exp = self.energy.close_interval()
        e = self.energy
        t_end = self._start  # the new interval's start is the old one's end
        rec = (t_end, imp, exp, e.import_wh, e.export_wh)
        # The commit point: the registers with the interval's record, in one atomic save; the
        # profile ring gets the record after it, and again at boot if a power cut came
        # between the two (_restore). The other order let registers go back after a cut.
        nv = self._nv
        if nv is None:
            store.save(ENERGY, {"e": e.state(), "idx": idx, "rec": rec})
            self._profile.append(struct.pack(_REC, *rec))
        else:
            st = e.state()
            nv.save(_NV, st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7], idx, *rec)
            flushed = self._profile.flushed
            self._profile.append(struct.pack(_REC, *rec))
            if self._profile.flushed != flushed and nv.snaps is None:
                # the ring went to flash: the registers' flash copy with it (a flat battery
                # then loses at most the records staged since)
                store.save(ENERGY, {"e": st, "idx": idx, "rec": rec, "g": nv.seq})
        self._closed_idx = idx
        if self._gap_interval:
            self._port.log("interval %d closed: +%d/-%d mWh, %d ms estimated (ADC gap)"
                           % (t_end, imp, exp, self._gap_interval * 1000 // self._rate))
            self._gap_interval = 0
        elif nv is None:
            # With battery-backed RAM an ordinary close is in the load profile only: its log
            # stages in a slot of that RAM, kept for the exceptions (docs/hardware.md "Flash wear")
            self._port.log("interval %d closed: +%d/-%d mWh" % (t_end, imp, exp))
        # LoPA: the closed interval's index (its start // length: self._idx, not yet moved
        # on) and the very import_mwh of its profile record.
        self._port.send("dc_security", "interval_value", (self._idx, imp))

    def _tick(self, payload):
        t, idx, start, length = payload
        self._t = t
        if self._idx < 0 and idx < self._closed_idx:
            # Booted behind the last close (a board without a battery-backed RTC resumes from
            # a time the clock saved before it, tasks/clock.py): nothing opens until the clock
            # reaches the interval that was open, so none is closed twice.
            return
        if self._idx >= 0 and idx < self._idx:
            # The clock was set back (a TIME_SET a little behind it, or a head-end's master
            # clock): the open interval stays open until the clock passes its end again, so
            # that the load profile never goes back in time.
            return
        if self._idx >= 0 and idx != self._idx:
            self._start, self._len = start, length
            self._close(idx)
        elif self._idx < 0 and self._closed_idx >= 0 and idx != self._closed_idx:
            # Booted into a later interval than the last one closed: what was
            # measured before the power cut in the unfinished one is lost.
            self._port.log("boot: interval %d open, last closed %d" % (idx, self._closed_idx))
        self._idx, self._start, self._len = idx, start, length

    def handle(self, sender, kind, payload):
        if kind == "tick":
            self._tick(payload)
        elif kind in ("read", "profile", "calibrate"):
            # head-end requests: tasks/metrology_cmd.py, in RAM only while one runs
            lazy.call("tasks.metrology_cmd", kind, self, sender, payload)
