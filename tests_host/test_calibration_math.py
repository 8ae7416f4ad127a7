"""Calibration math on CPython: the head-end's gains and unit-slip hints
(host_tools/headend/calibration.py), the meter's own checks and its log line
(firmware/lib/metro_cal.py), and why a PF-1 calibration must leave the phase alone (issue 20)."""

from __future__ import annotations

import math
from typing import Any

import metro_cal
import pytest
from click.testing import CliRunner

from host_tools.cli import main
from host_tools.headend.calibration import (
    Average,
    CalibrationError,
    check_gain,
    new_gains,
    unit_hint,
)

from . import test_metrology as tm

DEFAULT = [0.0276, 0.0069, 0.0]
CAL: dict[str, Any] = {"v_gain": 0.0276, "i_gain": 0.0069, "phase": 0.0, "default": DEFAULT,
                       "rate_hz": 2000}


def avg(v: float = 230.0, i: float = 5.0, p: float = 1150.0, pf: float = 1.0) -> Average:
    return Average(v, i, p, pf, 50.0, 10)


def test_unit_hints_say_which_unit_was_likely_meant() -> None:
    assert unit_hint(5000, 5.0, "A") == (
        "5000 A is 1000x the 5 A the meter reads now: did you mean 5 A (5000 mA)?")
    assert unit_hint(0.23, 230.0, "V").endswith("did you mean 230 V (0.23 kV)?")
    assert unit_hint(240, 230, "V") == ""  # a plausible reference: no hint
    assert unit_hint(5, 0.0, "A") == ""  # nothing measured: no ratio to speak of


def test_gains_follow_the_reference() -> None:
    assert new_gains("voltage", 240.0, 1.0, avg(), CAL) == pytest.approx(
        (0.0276 * 240 / 230, 0.0069, 0.0))
    assert new_gains("current", 5.5, 1.0, avg(), CAL) == pytest.approx((0.0276, 0.0069 * 1.1,
                                                                        0.0))
    # power at PF 1: the current gain, never the phase
    v, i, ph = new_gains("power", 1200.0, 1.0, avg(p=1150.0), {**CAL, "phase": 0.25})
    assert (v, ph) == (0.0276, 0.25) and i == pytest.approx(0.0069 * 1200 / 1150)


@pytest.mark.parametrize("step,true,msg", [
    ("current", 5000.0, "did you mean 5 A (5000 mA)?"),
    ("voltage", 0.23, "did you mean 230 V (0.23 kV)?"),
    ("current", 7.0, "+40 % from the board's default"),  # no unit slip, just too far
])
def test_a_gain_beyond_30_percent_is_refused_unless_forced(step: str, true: float,
                                                           msg: str) -> None:
    with pytest.raises(CalibrationError, match=msg.replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?").replace("+", r"\+")):
        new_gains(step, true, 1.0, avg(), CAL)
    assert new_gains(step, true, 1.0, avg(), CAL, force=True)  # forced: accepted
    with pytest.raises(CalibrationError):
        check_gain(math.nan, 1.0, "voltage", "", True)  # never, even forced


@pytest.mark.parametrize("bad", [0.0, -230.0, math.nan, math.inf])
def test_a_reference_that_is_not_a_positive_number_is_refused(bad: float) -> None:
    with pytest.raises(CalibrationError):
        new_gains("voltage", bad, 1.0, avg(), CAL)


def test_the_phase_step_needs_a_reactive_load() -> None:
    with pytest.raises(CalibrationError, match="needs a reactive load"):
        new_gains("phase", 1.0, 1.0, avg(pf=0.999), CAL)
    with pytest.raises(CalibrationError, match="needs a reactive load"):
        new_gains("phase", 0.5, 0.5, avg(pf=0.95), CAL)  # the meter's PF counts too
    # at PF 0.5 the meter reads 0.52: the current must lag more, by the angle error in samples
    _, _, ph = new_gains("phase", 0.5, 0.5, avg(pf=0.52), CAL)
    err = math.acos(0.5) - math.acos(0.52)
    assert ph == pytest.approx(err * 2000 / (2 * math.pi * 50)) and ph > 0


def test_metro_calibrate_leaves_the_phase_alone_near_pf_1() -> None:
    # issue 20: a meter measuring PF 0.9986 at a true PF 1 moved the phase by -0.333 sample
    # periods per run, whichever way the phase was off (acos has no sign): -0.333, -0.668, -1
    phase = 0.0
    for _ in range(3):
        _, _, phase = metro_cal.calibrate(230.0, 5.0, 0.9986, 230.0, 5.0, 1.0, 0.0276, 0.0069,
                                      phase, 2000, 50.0)
    assert phase == 0.0
    # on a reactive load it still follows the angle error
    _, _, phase = metro_cal.calibrate(230.0, 5.0, 0.52, 230.0, 5.0, 0.5, 0.0276, 0.0069, 0.0,
                                  2000, 50.0)
    assert phase > 0.1


def test_the_meter_refuses_what_the_head_end_would() -> None:
    d = (DEFAULT[0], DEFAULT[1], 0.0)
    assert metro_cal.cal_refusal((0.0276 * 1.29, 0.0069 * 0.71, 0.5), d, False) is None
    assert "beyond" in metro_cal.cal_refusal((0.0276 * 1.31, 0.0069, 0.0), d, False)
    assert metro_cal.cal_refusal((0.0276 * 100, 0.0069, 0.0), d, True) is None  # forced
    for bad in ((0.0, 0.0069, 0.0), (math.nan, 0.0069, 0.0), (math.inf, 0.0069, 0.0),
                (0.0276, 0.0069, 1.5), (0.0276, 0.0069, math.nan)):
        assert metro_cal.cal_refusal(bad, d, True), bad


def test_the_calibration_log_line_fits_a_metrology_log_record_whole() -> None:
    # policy.py: the metrology log's records are 64 bytes; 10 of header and checksum, 4 of time
    room = 64 - 10 - 4
    for op in ("voltage", "current", "power", "phase", "set", "ref", "default", "undo"):
        line = metro_cal.cal_log_line(op, (1.23456e-05, 1.23456e-05, -0.99999))
        assert len(line) <= room, line
    assert metro_cal.cal_log_line("phase", (0.0276, 0.0069, 0.25)) == (
        "calibrated phase 0.0276 0.0069 0.2500")


def test_the_old_one_shot_form_is_refused_with_the_new_one() -> None:
    r = CliRunner().invoke(main, ["calibrate", "--volts", "230", "--amps", "5", "--port", "x"])
    assert r.exit_code != 0
    r = CliRunner().invoke(main, ["calibrate", "--volts", "230", "--amps", "5"])
    assert r.exit_code == 2 and "calibrate voltage --volts V" in r.output


def test_three_pf_1_calibrations_of_a_distorted_load_keep_the_power_within_half_a_percent(
) -> None:
    # A PF-1 load with harmonics and noise reads PF 0.997 with no phase error at all (the
    # distortion, not an angle): the old calibration took that for a phase error, always of
    # the same sign, and walked the phase to -1 (power 1.5 % low). Now it leaves it alone.
    ns: dict[str, Any] = {}
    exec(tm.MEASURE, ns)
    params = {"vrms": 230.0, "irms": 5.0, "pf": 1.0, "h3": 0.03, "h5": 0.02, "ih3": 0.1,
              "noise": 16}
    cal = tuple(tm.CAL)  # the front end's own: it reads the true power
    true_p = ns["measure"](tm.waveform.Waveform, params, 2, cal)[-1][2]
    for _ in range(3):
        r = ns["measure"](tm.waveform.Waveform, params, 2, cal)[-1]
        assert r[4] < 0.998  # the meter's PF is below 1 ...
        cal = metro_cal.calibrate(r[0], r[1], r[4], 230.0, r[1], 1.0, *cal, 2000, r[5])
        assert cal[2] == 0.0  # ... and the phase stays
        r = ns["measure"](tm.waveform.Waveform, params, 2, cal)[-1]
        assert abs(r[2] / true_p - 1) < 0.005


@pytest.mark.parametrize("args", [["voltage", "--volts", "-5"], ["current", "--amps", "nan"],
                                  ["power", "--watts", "100", "--pf", "1.5"],
                                  ["phase", "--pf", "0"]])
def test_bad_references_are_refused_in_one_line_before_the_port_is_opened(
        args: list[str]) -> None:
    # (the port does not exist: an error about it would mean the input got that far)
    r = CliRunner().invoke(main, ["calibrate", *args, "--port", "/nonexistent/port"])
    assert r.exit_code == 1
    assert len(r.output.strip().splitlines()) == 1 and "nothing changed" in r.output
    assert "nonexistent" not in r.output
