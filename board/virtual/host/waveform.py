# The virtual board's analog front end: mains voltage and load current as
# a 16-bit ADC would read them through a bias network (mid-scale = 0 V/0 A).
#
# Hardware, not firmware: the supervisor (host_tools/sim/supervisor.py AdcRing) runs it on the
# host and writes the samples into the ADC's DMA ring, which the VM maps read-only (the ROM's
# _vhw.adc_*); it is never flashed. It runs on CPython and MicroPython (the host tests use both).
#
# Parameters (set from the host with `meterctl sim load`, all optional):
#   vrms (230), irms (5), pf (1.0, negative = capacitive), freq_hz (50),
#   h3 / h5 (voltage 3rd/5th harmonic, fraction of the fundamental),
#   ih3 (current 3rd harmonic), noise (ADC counts, uniform, +/-), export (0/1)
# The seed (one per meter) sets the harmonic phases and the noise, so that
# meters differ from one another and each is reproducible.
#
# Without "irms" the host has not fixed the load, and the current follows a
# household day instead (`household()`, below): base load, fridge, kettle,
# washing machine, cooking, lights, and on some meters PV that exports around
# midday. Its level, power factor and direction are worked out once per second
# of samples from the time of day (the board's RTC, or 1 s per `rate_hz`
# samples from midnight without a clock); the phase of the waveform runs on
# regardless, so the current stays continuous when its amplitude changes.
# vrms, freq_hz, the harmonics and the noise still come from the parameters.
import math
from array import array

V_FULL_SCALE = 400.0 * 1.4142135  # volts at ADC full scale (peak)
I_FULL_SCALE = 100.0 * 1.4142135  # amps at ADC full scale (peak)
MID = 32768


class Waveform:
    def __init__(self, seed, params, rate_hz, clock=None, full_scale=None):
        # clock: the board's rtc_get() (whole seconds; only the time of day,
        # t % 86400, and the day number count), for the household day; unused
        # when the parameters fix the load with "irms". full_scale: (volts, amps) peak at
        # ADC full scale, the front end the board's adapter assumes (its CAL_DEFAULT);
        # default the virtual board's.
        self.v_fs, self.i_fs = full_scale or (V_FULL_SCALE, I_FULL_SCALE)
        rng = _Rng(seed)
        g = params.get
        self.rate = rate_hz
        freq = g("freq_hz", 50.0)
        self.w = 2 * math.pi * freq / rate_hz
        # Samples per mains cycle when that is a whole number (50 Hz at 4 kHz: 80): the
        # waveform then repeats every cycle, and fill() copies one computed cycle instead of
        # computing every sample (a virtual meter's ADC costs little CPU: a fleet of them
        # fits on a small host). 0: not periodic in samples, every sample is computed.
        per = rate_hz / freq if freq > 0 else 0.0
        self.per = int(per) if per >= 2 and per == int(per) else 0
        self._tab = None  # (v, i) of one cycle, for the load set last
        self.vrms = g("vrms", 230.0)
        self.va = self.vrms * 1.4142135 / self.v_fs * 32767
        self.h3, self.h5, self.ih3 = g("h3", 0.0), g("h5", 0.0), g("ih3", 0.0)
        self.p3 = rng.random() * 2 * math.pi
        self.p5 = rng.random() * 2 * math.pi
        self.noise = g("noise", 0)
        self._rng = rng
        self.seed = seed
        self._clock = clock
        self._household = "irms" not in params
        self._next = 0  # household: sample index of the next load update
        # The meter's relay (its off-switch) sits between the mains and the load: open, no
        # current flows and the current channel reads its offset and noise alone.
        self.relay_open = False
        if self._household:
            self.phi = self.ia = 0.0
        else:
            self._set_load(g("irms", 5.0), g("pf", 1.0), g("export", 0))

    def _set_load(self, irms, pf, export):
        phi = math.acos(max(-1.0, min(1.0, abs(pf))))
        self.phi = -phi if pf < 0 else phi
        sign = -1.0 if export else 1.0
        self.ia = sign * irms * 1.4142135 / self.i_fs * 32767
        self._tab = None

    def set_relay(self, closed):
        # From the next sample computed on: the load is connected (closed) or not.
        if self.relay_open == bool(closed):
            self.relay_open = not closed
            self._tab = None

    def _update(self, k):
        # Once per second of samples: the household load at this time of day.
        t = self._clock() if self._clock is not None else k // self.rate
        irms, pf, export = household(self.seed, t % 86400, t // 86400, self.vrms)
        self._set_load(irms, pf, export)
        self._next = k + self.rate

    def sample(self, k):
        # Sample k of the continuous stream: (V counts, I counts).
        if self._household and k >= self._next:
            self._update(k)
        return self._at(k % self.per if self.per else k)

    def _at(self, k):
        # The waveform at sample k for the load set now (k reduced to one cycle when periodic).
        a = self.w * k
        v = self.va * (math.sin(a) + self.h3 * math.sin(3 * a + self.p3) + self.h5 * math.sin(5 * a + self.p5))
        i = 0.0 if self.relay_open else self.ia * (
            math.sin(a - self.phi) + self.ih3 * math.sin(3 * (a - self.phi) + self.p3))
        if self.noise:
            n = self.noise
            v += (self._rng.random() * 2 - 1) * n
            i += (self._rng.random() * 2 - 1) * n
        return _clip(int(MID + v)), _clip(int(MID + i))

    def fill(self, v_buf, i_buf, k0, n):
        # Samples k0 .. k0+n-1 into v_buf[0:n], i_buf[0:n]: what sample() gives, sample by
        # sample, but one mains cycle is computed per load (a household changes it once a
        # second) and copied, unless the waveform does not repeat (noise, or a frequency
        # that is no whole number of samples).
        per = self.per
        if not per or self.noise:
            for j in range(n):
                v_buf[j], i_buf[j] = self.sample(k0 + j)
            return
        j = 0
        while j < n:
            k = k0 + j
            if self._household and k >= self._next:
                self._update(k)
            end = n
            if self._household and self._next - k0 < end:
                end = self._next - k0
            tab = self._tab
            if tab is None:
                tv = array("H", bytes(2 * per))
                ti = array("H", bytes(2 * per))
                for m in range(per):
                    tv[m], ti[m] = self._at(m)
                tab = self._tab = (tv, ti)
            tv, ti = tab
            m = k % per
            while j < end:
                v_buf[j] = tv[m]
                i_buf[j] = ti[m]
                j += 1
                m += 1
                if m == per:
                    m = 0


# The household day. Appliances: (watts, power factor). Times in seconds of the day.
_DAY = 86400


def household(seed, t_of_day, day=0, vrms=230.0):
    """(irms, pf, export) of meter `seed`'s household at t_of_day (0..86399 s)
    on day `day`. pf >= 0 (lagging); export = 1 when PV exceeds the load."""
    t = int(t_of_day) % _DAY
    day = int(day)
    p = q = 0.0

    # standby and always-on electronics: 90..240 W
    p0 = 90.0 + 150.0 * _u(seed, 1)
    p += p0
    q += p0 * 0.48  # pf 0.9
    # fridge: a compressor cycling, 40..60 min period, 35..50 % on
    period = 2400 + int(1200 * _u(seed, 2))
    if (t + int(period * _u(seed, 3))) % period < period * (0.35 + 0.15 * _u(seed, 4)):
        w = 80.0 + 40.0 * _u(seed, 5)
        p += w
        q += w * 0.75  # pf 0.8
    # lights and TV in the evening, a little in the morning: pf 0.95
    w = 0.0
    if 64800 + 1800 * _u(seed, 6) <= t < 82800 + 3600 * _u(seed, 7):
        w = 100.0 + 150.0 * _u(seed, 8)
    elif 23400 <= t < 30600:
        w = 80.0
    p += w
    q += w * 0.33
    # kettle, 2.0..2.2 kW resistive, 2.5..4 min, at up to 6 times of the day
    kw = 2000.0 + 200.0 * _u(seed, 9)
    for n in range(6):
        start = _KETTLE[n] + int(5400 * (_u(seed, 10 + n, day) - 0.5))
        if start <= t < start + 150 + int(90 * _u(seed, 20 + n, day)) and \
                _u(seed, 30 + n, day) < 0.6:
            p += kw
    # washing machine on some days: heat 2 kW 20 min, wash 65 min, spin 15 min
    if _u(seed, 40, day) < 0.4:
        d = t - (32400 + int(36000 * _u(seed, 41, day)))
        if 0 <= d < 1200:
            p += 2000.0
        elif 1200 <= d < 5100:
            if d % 60 < 40:  # the drum turns, pauses
                p += 200.0
                q += 200.0 * 1.02  # pf 0.7
        elif 5100 <= d < 6000:
            p += 500.0
            q += 500.0 * 0.75
    # cooking: dinner every day, lunch on some; hobs and oven cycle on thermostats
    d = t - (61200 + int(3600 * _u(seed, 50, day)))
    if 0 <= d < 3600 + int(1800 * _u(seed, 51, day)) and d % 180 < 120:
        p += 1500.0 + 1500.0 * _u(seed, 52)
    d = t - (43200 + int(1800 * _u(seed, 53, day)))
    if _u(seed, 54, day) < 0.3 and 0 <= d < 1800 and d % 120 < 90:
        p += 1500.0
    # PV on about half of the meters: a bell from 8:00 to 18:00, peak at 13:00,
    # scaled by the day's sun; on cloudy days passing clouds, per 10 minutes
    if _u(seed, 60) < 0.5 and 28800 < t < 64800:
        sun = 0.3 + 0.7 * _u(seed, 61, day)
        if sun < 0.7:
            sun *= 0.5 + 0.5 * _u(seed, 62, day * 144 + t // 600)
        s = math.sin(math.pi * (t - 28800) / 36000)
        p -= (2000.0 + 3000.0 * _u(seed, 63)) * sun * s * s

    va = math.sqrt(p * p + q * q)
    if va < 1e-3:
        return 0.0, 1.0, 0
    return va / vrms, abs(p) / va, 1 if p < 0 else 0


_KETTLE = (25200, 37800, 46800, 57600, 70200, 79200)  # 7:00 10:30 13:00 16:00 19:30 22:00


def _u(seed, a, b=0):
    # A reproducible uniform number in [0, 1) for (seed, a, b).
    h = ((seed & 0xFFFFFFFF) * 0x9E3779B1 + a * 0x85EBCA77 + b * 0xC2B2AE3D) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x45D9F3B) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x45D9F3B) & 0xFFFFFFFF
    h ^= h >> 16
    return h / 4294967296.0


class _Rng:
    # xorshift32: MicroPython's random has no per-instance generator, and the
    # front end must not disturb the firmware's own use of `random`.
    def __init__(self, seed):
        self.s = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1

    def random(self):
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.s = s
        return s / 4294967296.0


def _clip(x):
    return 0 if x < 0 else (65535 if x > 65535 else x)
