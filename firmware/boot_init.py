# The making at boot of the kernel (kernel.py Kernel) and of the tasks whose rare requests'
# code is loaded only for a request (metrology, clock): run once for each at boot, in
# RAM only while it runs (lib/lazy.py; docs/hardware.md "Memory"). Not in those requests'
# modules: a boot then interns none of their names (qstrs are never freed).
# (Each imports what it uses itself: the module is loaded before the tasks' modules are.)
import store


def kernel(self, flows, log_of, logs, now_s, sleep_ms, size):
    import time
    from array import array

    import kernel as _kernel
    from ringlog import Ring

    # kernel.Kernel's state, made once at boot
    # size: (tasks, messages in all their mailboxes) that add() will be asked for, so that
    # the two lists are made once, whole (growing them as tasks come would leave their
    # old copies as holes in the heap); more still works, it only grows them.
    # Private copies: changing policy.py's tables at run time grants nothing. One flat
    # tuple: a sender, then each of its receivers followed by its kinds and None, then
    # None; the next sender... (one object; a lookup allocates nothing).
    by = {}
    for sender, receiver in flows:
        by.setdefault(sender, []).extend((receiver,) + tuple(flows[(sender, receiver)])
                                         + (None,))
    fl = []
    for sender in by:
        fl.append(sender)
        fl.extend(by[sender])
        fl.append(None)
    self._flows = tuple(fl)
    by = fl = None
    self._log_of = dict(log_of)
    self._now_s = now_s
    self._sleep_ms = sleep_ms
    self._logs = {}
    for name in logs:
        # (path, capacity, record size[, a window of battery-backed RAM to stage in])
        self._logs[name] = Ring(*logs[name])
    self._names = ["kernel"]
    self._objs = [None]
    self._steps = [None]
    self._f = array("i", bytes(4 * _kernel.NF * (1 + size[0])))
    self._due = [0] * (1 + size[0])
    self._by_name = {"kernel": 0}
    self.refused = 0
    self._win_start = time.ticks_us()
    self._win_sleep = 0
    self._last_window = (0, 0)  # (length us, sleep us)
    # Streams whose input makes a task's step due at once (a task's `wake`: comm's WAN
    # input), so that the idle wait ends when a frame arrives, not at the next period.
    self._wake = None  # a select.poll of them, made with the first
    self._wake_by = []  # (stream, task row)


def metrology(self, hw):
    from array import array

    import lazy
    import metro
    from ringlog import Ring
    from tasks.metrology import _NV, BUF, CALIB, ENERGY, PROFILE, PROFILE_CAP, PROFILE_REC

    # Metrology's state, made once at boot
    self._adc = hw["adc"]
    self._rate = hw["adc_rate_hz"]
    # calib.json: {"cal": [v_gain, i_gain, phase], "prev": the one before or None,
    # "src": the step that set it, "rate": the sample rate its phases are in}; a bare list is
    # the older format
    self.cal_default = tuple(hw["cal_default"])
    rec = store.load(CALIB, None)
    if isinstance(rec, list):
        rec = {"cal": rec, "prev": None, "src": "ref"}
    self.cal_rec = rec or {"cal": list(self.cal_default), "prev": None, "src": "default"}
    was = self.cal_rec.get("rate", 2000)
    if was != self._rate:
        # The phase is in sample periods of the rate it was set at ("rate"; none before the
        # rates went to 4 kHz, when every board sampled at 2 kHz): the same time at this rate.
        for key in ("cal", "prev"):
            c = self.cal_rec[key]
            if c:
                p = c[2] * self._rate / was
                if not -1.0 <= p <= 1.0:
                    self._port.log("calibration: phase %s at %d Hz is beyond one sample at %d Hz"
                                   % (c[2], was, self._rate))
                    p = -1.0 if p < 0 else 1.0
                self.cal_rec[key] = [c[0], c[1], p]
        self.cal_rec["rate"] = self._rate
    cal = self.cal_rec["cal"]
    self.cal = tuple(cal)
    self._acc = metro.Accumulator(self._rate, cal[0], cal[1], cal[2])
    n = hw.get("adc_read_max") or BUF
    self._vbuf = array("H", bytes(2 * n))
    self._ibuf = array("H", bytes(2 * n))
    st = store.load(ENERGY, None)
    self._nv = nv = hw.get("nvram")
    if nv is not None:
        g = st.get("g", 0) if st else 0
        v = nv.load(_NV) if nv.seq > g else None
        if v is not None:  # newer than the flash copy (a power cut, not a flat battery)
            st = {"e": list(v[:8]), "idx": v[8], "rec": list(v[9:])}
        nv.seq = max(nv.seq, g)
    self.energy = metro.Energy.from_state(st["e"]) if st else metro.Energy()
    self._closed_idx = st["idx"] if st else -1
    self._profile = Ring(PROFILE, PROFILE_CAP, PROFILE_REC, hw.get("profile_stage"))
    if st and st.get("rec"):
        lazy.call("tasks.metrology_cmd", "restore", self, st["rec"])
    self.last = None  # the last complete second
    self.seconds = 0
    # Samples the board's ADC lost (board.adc.last_gap: the consumer fell behind its DMA
    # ring): counted since boot and in the open interval, whose energy gets the time not
    # seen at the last second's power, said so in its close log line; never silent.
    self._gaps = hasattr(self._adc, "last_gap")
    self.gap_samples = 0
    self._gap_interval = 0
    self._t = 0
    self._idx = -1
    self._start = 0
    self._len = 0


def clock(self, hw, state_path):
    from tasks.clock import DEFAULT_INTERVAL_S

    # Clock's state, made once at boot (its file: clock.STATE)
    port = self._port
    self._rtc = hw["rtc"]
    st = store.load(state_path, {})
    self.interval_s = st.get("interval_s", DEFAULT_INTERVAL_S)
    self._saved_t = saved = st.get("t", 0)  # the time last written to flash
    self._nv = nv = hw.get("nvram")
    if nv is not None:
        g = st.get("g", 0)
        v = nv.load("<I") if nv.seq > g else None
        if v is not None:
            saved = v[0]
        nv.seq = max(nv.seq, g)
    now = self._rtc.get()
    if now < saved:
        # Time never runs backwards across a power cut: resume from the
        # last time saved, until the head-end sets it.
        self._rtc.set(saved)
        port.log("clock: rtc %d behind saved %d; resumed from saved" % (now, saved))
    self._last = -1
    self._snap_seen = 0  # the RAM snapshot's seq at the last daily flush
