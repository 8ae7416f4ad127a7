# Metrology: rms voltage and current, real and apparent power, power factor and
# mains frequency from continuous ADC samples, and drift-free energy registers.
# Shared by the meter firmware (MicroPython) and the host tests (CPython).
#
# Samples arrive as u16 (0..65535, mid-scale = 0 V / 0 A), in chunks, per
# channel. Each is reduced to 12-bit counts (>> 4, as a Pico's ADC is 12-bit)
# and has the channel's offset removed: the mean of the previous second's
# samples (2048 to start with), as EmonLibCM does. What is left of the offset
# within a second is removed exactly when the second is closed, from the sums
# of the samples (variance = mean of squares - square of mean).
#
# Per sample the work is integer only (a Pico has no FPU): sums of v, i, v*v,
# i*i, v[k]*i[k], v[k-1]*i[k] and v[k]*i[k-1]. Partial sums run over at most
# 64 samples (64 * 4095**2 < 2**30, so they stay small ints on a Pico) and are
# then carried into split registers, total = hi * 2**20 + lo with 0 <= lo < 2**20.
# Nothing is allocated while feeding.
#
# Phase calibration (EmonLibCM's method): the voltage is shifted by `phase`
# sample periods (-1..1) by linear interpolation between consecutive voltage
# samples before it is multiplied with the current. The interpolation is linear,
# so it is applied to the sums once per second rather than per sample:
#   phase >= 0: sum(v_s * i) = (1 - phase) * sum(v[k] i[k]) + phase * sum(v[k+1] i[k])
#   phase < 0:  sum(v_s * i) = (1 + phase) * sum(v[k] i[k]) - phase * sum(v[k-1] i[k])
# A positive phase makes the current lag the voltage more. Interpolating also
# shrinks the fundamental a little (0.3 % at half a sample, 50 Hz, 2 kHz); that
# is corrected from the measured frequency.
#
# Frequency: positive-going zero crossings of the voltage (with 16 counts of
# hysteresis), each located between two samples by linear interpolation:
#   freq = (crossings - 1) * rate / (t_last - t_first)
import math
import sys
from array import array

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):  # type: ignore[misc]  # the CPython stand-in
        return x


_SPLIT = const(20)  # split registers: total = hi << 20 + lo
_LO = const(0xFFFFF)
_CHUNK = const(64)  # samples per partial sum: 64 * 4095**2 < 2**30
_HYST = const(16)  # zero-crossing hysteresis, 12-bit counts

# Layout of the state list (small ints only). Registers are (hi, lo) pairs.
_OV = const(0)  # voltage offset, 12-bit counts
_OI = const(1)  # current offset
_VP = const(2)  # previous raw voltage sample (12-bit, offset not removed)
_IP = const(3)  # previous raw current sample
_SV = const(4)  # sum v
_SI = const(5)  # sum i
_SVV = const(6)  # sum v*v (hi, lo)
_SII = const(8)  # sum i*i
_S0 = const(10)  # sum v[k]*i[k]
_SM = const(12)  # sum v[k-1]*i[k]
_SP = const(14)  # sum v[k]*i[k-1]
_ARMED = const(16)  # voltage went below -hysteresis since the last crossing
_NX = const(17)  # positive-going zero crossings this second
_X1 = const(18)  # first crossing: (sample index, numerator, denominator)
_X2 = const(21)  # last crossing: t = index + numerator / denominator
_N = const(24)  # samples this second
_STATE_LEN = const(25)


# The hot loop in native code where the board can run it (lib/metro_fast.py: viper, the same
# integers), else this module's _accumulate. Only MicroPython is asked: on CPython the viper
# module is not Python. The Pyboard goes without: a board keeps loaded native code in its GC
# heap (py/mpconfig.h MP_PLAT_ALLOC_EXEC, v1.28.0), about 1.3 KB here, and its boot margin at
# the official PYBV11 heap is thin (docs/hardware.md "Sample rate").
_fast = None
if sys.implementation.name == "micropython" and sys.platform != "pyboard":
    try:
        from metro_fast import accumulate as _fast  # type: ignore[assignment]  # None above
    except (ImportError, ValueError, SyntaxError):
        # not in the image (a bytecode-only build), an .mpy of another arch (ValueError), or
        # source on a port without a native emitter (SyntaxError)
        pass


def _accumulate(st, vb, ib, k, end):
    # Fold samples vb[k:end], ib[k:end] into the state list st.
    ov = st[_OV]
    oi = st[_OI]
    vp = st[_VP] - ov
    ip = st[_IP] - oi
    sv = st[_SV]
    si = st[_SI]
    armed = st[_ARMED]
    nx = st[_NX]
    t = st[_N] - k - 1  # index within the second of the sample before vb[j] is j + t
    while k < end:
        m = end - k
        if m > _CHUNK:
            m = _CHUNK
        a = 0
        b = 0
        c = 0
        d = 0
        e = 0
        for j in range(k, k + m):
            v = (vb[j] >> 4) - ov
            x = (ib[j] >> 4) - oi
            sv += v
            si += x
            a += v * v
            b += x * x
            c += v * x
            d += vp * x
            e += v * ip
            if armed:
                if v >= 0:
                    armed = 0
                    if nx == 0:
                        st[_X1] = j + t
                        st[_X1 + 1] = -vp
                        st[_X1 + 2] = v - vp
                    st[_X2] = j + t
                    st[_X2 + 1] = -vp
                    st[_X2 + 2] = v - vp
                    nx += 1
            elif v < -_HYST:
                armed = 1
            vp = v
            ip = x
        # carry the partial sums into the split registers
        lo = st[_SVV + 1] + (a & _LO)
        st[_SVV] += (a >> _SPLIT) + (lo >> _SPLIT)
        st[_SVV + 1] = lo & _LO
        lo = st[_SII + 1] + (b & _LO)
        st[_SII] += (b >> _SPLIT) + (lo >> _SPLIT)
        st[_SII + 1] = lo & _LO
        lo = st[_S0 + 1] + (c & _LO)
        st[_S0] += (c >> _SPLIT) + (lo >> _SPLIT)
        st[_S0 + 1] = lo & _LO
        lo = st[_SM + 1] + (d & _LO)
        st[_SM] += (d >> _SPLIT) + (lo >> _SPLIT)
        st[_SM + 1] = lo & _LO
        lo = st[_SP + 1] + (e & _LO)
        st[_SP] += (e >> _SPLIT) + (lo >> _SPLIT)
        st[_SP + 1] = lo & _LO
        k += m
    st[_VP] = vp + ov
    st[_IP] = ip + oi
    st[_SV] = sv
    st[_SI] = si
    st[_ARMED] = armed
    st[_NX] = nx
    st[_N] = k + t + 1


def _total(r, i):
    return r[i] * 1048576.0 + r[i + 1]


class Accumulator:
    """One second of samples at a time -> (vrms, irms, p_w, s_va, pf, freq_hz).

    v_gain, i_gain: volts and amps per 12-bit count; phase: sample periods, -1..1.
    A second ends after rate_hz samples, wherever that falls in a feed() chunk;
    ready() then says a result is waiting. The calibration is applied by result(),
    so set_cal() counts for the whole second it is called in. A second that is not
    collected before the next one ends is replaced by it. P < 0 (and so PF < 0)
    is export."""

    def __init__(self, rate_hz, v_gain, i_gain, phase=0.0):
        self.rate = rate_hz
        # int arrays, not lists: half the RAM (every value fits 32 bits: sums of one second)
        self._st = array("i", [0] * _STATE_LEN)
        self._done = array("i", [0] * _STATE_LEN)  # the last completed second, until result()
        self._ready = False
        st = self._st
        st[_OV] = st[_OI] = st[_VP] = st[_IP] = 2048
        self.set_cal(v_gain, i_gain, phase)

    def set_cal(self, v_gain, i_gain, phase=0.0):
        if not -1.0 <= phase <= 1.0:
            raise ValueError("phase must be within -1..1 sample periods")
        self.v_gain = v_gain
        self.i_gain = i_gain
        self.phase = phase

    def feed(self, v_buf, i_buf, n):
        # The first n samples of v_buf/i_buf (array('H')), in time order.
        st = self._st
        rate = self.rate
        k = 0
        while k < n:
            end = k + rate - st[_N]
            if end > n:
                end = n
            if _fast is None:
                _accumulate(st, v_buf, i_buf, k, end)
            else:
                _fast(k, v_buf, i_buf, end, st)
            k = end
            if st[_N] >= rate:
                self._close()

    def _close(self):
        st = self._st
        done = self._done
        for j in range(_STATE_LEN):
            done[j] = st[j]
        n = st[_N]
        # next second's offsets: this second's means, rounded
        st[_OV] += (2 * st[_SV] + n) // (2 * n)
        st[_OI] += (2 * st[_SI] + n) // (2 * n)
        for j in range(_SV, _ARMED):
            st[j] = 0
        st[_NX] = 0
        st[_N] = 0
        self._ready = True

    def ready(self):
        return self._ready

    def result(self):
        # (vrms, irms, p_w, s_va, pf, freq_hz) of the last completed second, or
        # None if no second has completed since the previous call.
        if not self._ready:
            return None
        self._ready = False
        r = self._done
        n = r[_N]
        mv = r[_SV] / n
        mi = r[_SI] / n
        vms = _total(r, _SVV) / n - mv * mv
        ims = _total(r, _SII) / n - mi * mi
        nx = r[_NX]
        freq = 0.0
        if nx >= 2:
            dt = (r[_X2] - r[_X1]) + r[_X2 + 1] / r[_X2 + 2] - r[_X1 + 1] / r[_X1 + 2]
            if dt > 0:
                freq = (nx - 1) * self.rate / dt
        f = self.phase
        if f >= 0:
            svi = (1.0 - f) * _total(r, _S0) + f * _total(r, _SP)
        else:
            svi = (1.0 + f) * _total(r, _S0) - f * _total(r, _SM)
            f = -f
        p = svi / n - mv * mi
        if f and freq > 0:
            # gain of the interpolation at the fundamental
            c = math.cos(2 * math.pi * freq / self.rate)
            g2 = (1.0 - f) ** 2 + f * f + 2.0 * f * (1.0 - f) * c
            p /= math.sqrt(g2)
        vrms = math.sqrt(vms if vms > 0 else 0.0) * self.v_gain
        irms = math.sqrt(ims if ims > 0 else 0.0) * self.i_gain
        p_w = p * self.v_gain * self.i_gain
        s_va = vrms * irms
        pf = p_w / s_va if s_va > 0 else 0.0
        if pf > 1.0:
            pf = 1.0
        elif pf < -1.0:
            pf = -1.0
        return (vrms, irms, p_w, s_va, pf, freq)


_MJ_PER_WH = const(3600000)
_MJ_PER_MWH = const(3600)


class Energy:
    """Import/export energy registers, integers only so that nothing drifts.

    Totals in whole Wh plus a mJ remainder; the current interval in mWh plus a
    mJ remainder, which carries into the next interval."""

    def __init__(self):
        self.import_wh = 0
        self.export_wh = 0
        self._imp_mj = 0
        self._exp_mj = 0
        self.interval_import_mwh = 0
        self.interval_export_mwh = 0
        self._int_imp_mj = 0
        self._int_exp_mj = 0

    def add(self, p_w, dt_s=1):
        mj = int(round(p_w * dt_s * 1000))
        if mj > 0:
            q, self._imp_mj = divmod(self._imp_mj + mj, _MJ_PER_WH)
            self.import_wh += q
            q, self._int_imp_mj = divmod(self._int_imp_mj + mj, _MJ_PER_MWH)
            self.interval_import_mwh += q
        elif mj < 0:
            q, self._exp_mj = divmod(self._exp_mj - mj, _MJ_PER_WH)
            self.export_wh += q
            q, self._int_exp_mj = divmod(self._int_exp_mj - mj, _MJ_PER_MWH)
            self.interval_export_mwh += q

    def close_interval(self):
        out = (self.interval_import_mwh, self.interval_export_mwh)
        self.interval_import_mwh = 0
        self.interval_export_mwh = 0
        return out

    def state(self):
        # [import Wh, mJ, export Wh, mJ, interval import mWh, mJ, interval export mWh, mJ]
        return [self.import_wh, self._imp_mj, self.export_wh, self._exp_mj,
                self.interval_import_mwh, self._int_imp_mj,
                self.interval_export_mwh, self._int_exp_mj]

    @classmethod
    def from_state(cls, lst):
        if len(lst) != 8:
            raise ValueError("energy state: 8 integers expected")
        for x in lst:
            if not isinstance(x, int) or x < 0:
                raise ValueError("energy state: non-negative integers expected")
        if lst[1] >= _MJ_PER_WH or lst[3] >= _MJ_PER_WH or lst[5] >= _MJ_PER_MWH \
                or lst[7] >= _MJ_PER_MWH:
            raise ValueError("energy state: remainder out of range")
        e = cls()
        (e.import_wh, e._imp_mj, e.export_wh, e._exp_mj,
         e.interval_import_mwh, e._int_imp_mj, e.interval_export_mwh, e._int_exp_mj) = lst
        return e
