# Calibration math for the meter (tasks/metrology_cmd.py, a CALIBRATE request): new gains and
# phase from one measurement of a known load, the meter's own refusals, its log line. Apart
# from lib/metro.py, whose code is in RAM all the time (each second's rms and power): this is
# imported only while a calibration runs (lib/lazy.py, docs/hardware.md "Memory"). Shared by
# the firmware (MicroPython) and the host tests (CPython).
import math


def calibrate(measured_vrms, measured_irms, measured_pf, true_v, true_i, true_pf,
              v_gain, i_gain, phase, rate_hz, freq_hz):
    """New (v_gain, i_gain, phase) from one measurement of a known load.

    The phase comes from the angle error, so the reference load must be reactive
    (e.g. PF 0.5) and import with the current lagging or in phase (the sign of a
    PF here says import/export, not lead/lag)."""
    if measured_vrms <= 0 or measured_irms <= 0 or freq_hz <= 0:
        raise ValueError("calibration needs a measured voltage, current and frequency")
    v_gain = v_gain * true_v / measured_vrms
    i_gain = i_gain * true_i / measured_irms
    if abs(true_pf) <= REACTIVE_PF and abs(measured_pf) <= REACTIVE_PF:
        # Only a reactive load tells the angle. At PF 1 harmonics and noise alone read a PF
        # below 1, acos() has no sign and is steep (PF 0.9999: 0.8 degrees), so each PF-1
        # calibration pushed the phase the same way again (issue 20: -0.333, -0.668, -1.0).
        # There the phase is left alone (docs/calibration.md).
        err = math.acos(_clamp1(true_pf)) - math.acos(_clamp1(measured_pf))
        phase = phase + err * rate_hz / (2 * math.pi * freq_hz)
    return v_gain, i_gain, max(-1.0, min(1.0, phase))


REACTIVE_PF = 0.9  # |PF| at or below which a load is reactive enough to calibrate the phase
CAL_SPAN = 0.3  # a gain further than this from the board's default is refused without force


def cal_refusal(cal, default, force):
    """Why the calibration (v_gain, i_gain, phase) is refused, or None.

    Gains must be > 0, and within CAL_SPAN of the board's default unless forced (a gain
    100x off is a unit slip: mA for A, kV for V); the phase within -1..1 sample periods."""
    for k in (0, 1):
        g = cal[k]
        if not 0 < g < 1e9:  # (NaN and inf too)
            return "gain must be > 0 and finite"
        if not force and abs(g / default[k] - 1.0) > CAL_SPAN:
            return "%s gain %.3gx the default: beyond +-30%% (force?)" % (
                "voltage" if k == 0 else "current", g / default[k])
    if not -1.0 <= cal[2] <= 1.0:
        return "phase must be within -1..1 sample periods"
    return None


def cal_log_line(op, cal):
    # The metrology log's records hold 50 characters of text (policy.py: 64-byte records):
    # the longest op ("voltage") with gains like 1.23457e-05 still fits, whole.
    return "calibrated %s %.6g %.6g %.4f" % (op, cal[0], cal[1], cal[2])


def _clamp1(x):
    return -1.0 if x < -1.0 else (1.0 if x > 1.0 else x)
