"""Calibration against a reference meter, one quantity at a time (docs/calibration.md).

Each step averages the meter's own readings over some seconds, works out the new gain (or
phase) on the host, checks it, and sends it with CALIBRATE {"op": "set"}; the meter checks
it again (lib/metro.py cal_refusal), keeps the calibration it replaces for `undo`, and
persists both at once. The pure math (new gains, the unit-slip hint) is separate from the
link, so that it is tested on CPython alone."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from host_tools.headend import wire
from host_tools.headend.client import MeterLink

CAL_SPAN = 0.3  # as firmware/lib/metro.py: a gain further from the board's default needs force
REACTIVE_PF = 0.9  # the phase step needs |PF| at or below this, as the meter measures it
UNITS = {"voltage": "V", "current": "A", "power": "W"}
STEPS = ("voltage", "current", "power", "phase")


class CalibrationError(Exception):
    """A step refused before anything was sent: the meter's calibration is unchanged."""


@dataclass(frozen=True)
class Average:
    """The meter's readings averaged over `seconds` complete seconds."""

    vrms: float
    irms: float
    power_w: float
    pf: float
    freq_hz: float
    seconds: int


@dataclass(frozen=True)
class StepResult:
    step: str
    true: float  # the reference's value (the PF for the phase step)
    unit: str
    before: Average
    after: Average
    error_before_pct: float
    error_after_pct: float
    cal: dict[str, Any]  # the meter's answer: gains, phase, source, previous, default


def error_pct(measured: float, true: float) -> float:
    return (measured - true) / true * 100.0


def unit_hint(true: float, measured: float, unit: str) -> str:
    """Why a reference value this far from the reading looks like a unit slip, with the
    likely value; '' when it does not (within a factor of 30 either way)."""
    if measured <= 0 or true <= 0:
        return ""
    ratio = true / measured
    times = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.2g}"
    head = f"{true:g} {unit} is {times}x the {measured:.3g} {unit} the meter reads now"
    if ratio >= 30:
        return f"{head}: did you mean {true / 1000:g} {unit} ({true:g} m{unit})?"
    if ratio <= 1 / 30:
        return f"{head}: did you mean {true * 1000:g} {unit} ({true:g} k{unit})?"
    return ""


def check_gain(new: float, default: float, what: str, hint: str, force: bool) -> None:
    """Refuse a gain that is not finite and > 0, or beyond CAL_SPAN of the default unless
    forced; the message carries the unit-slip hint when there is one."""
    if not (math.isfinite(new) and new > 0):
        raise CalibrationError(f"the new {what} gain would be {new}: nothing changed")
    off = new / default - 1.0
    if abs(off) > CAL_SPAN and not force:
        msg = hint or (f"the new {what} gain is {off * 100:+.0f} % from the board's default"
                       f" (limit +-{CAL_SPAN * 100:.0f} %)")
        sep = " " if msg.endswith("?") else ": "
        raise CalibrationError(f"{msg}{sep}nothing changed (--force sets it anyway)")


def new_gains(step: str, true: float, pf: float, avg: Average, cal: dict[str, Any],
              force: bool = False) -> tuple[float, float, float]:
    """(v_gain, i_gain, phase) after one step, from the averaged readings `avg` taken with
    the calibration `cal` (the meter's CALIBRATE show answer). voltage: true volts; current:
    true amps; power: true watts at the reference's `pf` (|pf| > 0.9 sets the current gain
    from the power, the phase untouched; on a reactive load it sets the phase); phase: the
    reference's PF, on a reactive load."""
    v, i, ph = float(cal["v_gain"]), float(cal["i_gain"]), float(cal["phase"])
    dv, di = cal["default"][0], cal["default"][1]
    if not (math.isfinite(true) and true > 0):
        raise CalibrationError(f"the reference value must be > 0, not {true}")
    if step == "voltage":
        nv = v * true / avg.vrms if avg.vrms > 0 else math.inf
        check_gain(nv, dv, "voltage", unit_hint(true, avg.vrms, "V"), force)
        return nv, i, ph
    if step == "current":
        ni = i * true / avg.irms if avg.irms > 0 else math.inf
        check_gain(ni, di, "current", unit_hint(true, avg.irms, "A"), force)
        return v, ni, ph
    if not 0 < abs(pf) <= 1:
        raise CalibrationError(f"--pf must be in (0, 1], not {pf}")
    if step == "power" and abs(pf) > REACTIVE_PF:
        # A near-resistive load: the power's error is the gains' (the phase barely counts
        # there, and which way it is off cannot be told), so the power sets the current gain.
        ni = i * true / avg.power_w if avg.power_w > 0 else math.inf
        check_gain(ni, di, "current", unit_hint(true, avg.power_w, "W"), force)
        return v, ni, ph
    # the phase: from the angle error, on a reactive load only (lib/metro.py calibrate)
    if abs(avg.pf) > REACTIVE_PF or abs(pf) > REACTIVE_PF:
        raise CalibrationError(
            f"the phase step needs a reactive load (|PF| <= {REACTIVE_PF}): the meter measures"
            f" PF {avg.pf:.3f} and the reference says {pf:g}; at PF 1 the phase error cannot be"
            " told (nothing changed)")
    if avg.freq_hz <= 0:
        raise CalibrationError("the meter measures no mains frequency: nothing changed")
    err = math.acos(min(1.0, abs(pf))) - math.acos(min(1.0, abs(avg.pf)))
    nph = ph + err * float(cal["rate_hz"]) / (2 * math.pi * avg.freq_hz)
    if not -1.0 <= nph <= 1.0:
        raise CalibrationError(f"the phase would be {nph:.3f} sample periods, beyond -1..1:"
                               " is the load's PF right? (nothing changed)")
    return v, i, nph


def average(link: MeterLink, seconds: int, sleep: Callable[[float], None] = time.sleep,
            after_second: int = -1) -> Average:
    """The mean of `seconds` complete seconds that the meter measured after `after_second`
    (its READ "seconds" counter), one READ per second."""
    got: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + 3 * seconds + 10
    while len(got) < seconds:
        r = link.request(wire.K_READ)
        if r["seconds"] > after_second and r["seconds"] >= 1:
            got[r["seconds"]] = r
        if time.monotonic() > deadline:
            raise CalibrationError("the meter's readings did not advance: nothing changed")
        if len(got) < seconds:
            sleep(0.5)
    rs = list(got.values())

    def mean(k: str) -> float:
        return sum(float(r[k]) for r in rs) / len(rs)

    return Average(mean("vrms"), mean("irms"), mean("power_w"), mean("pf"), mean("freq_hz"),
                   len(rs))


def show(link: MeterLink) -> dict[str, Any]:
    r: dict[str, Any] = link.request(wire.K_CALIBRATE, {"op": "show"})
    return r


def reset(link: MeterLink) -> dict[str, Any]:
    r: dict[str, Any] = link.request(wire.K_CALIBRATE, {"op": "reset"})
    return r


def undo(link: MeterLink) -> dict[str, Any]:
    r: dict[str, Any] = link.request(wire.K_CALIBRATE, {"op": "undo"})
    return r


def _measured(step: str, a: Average) -> float:
    return {"voltage": a.vrms, "current": a.irms, "power": a.power_w, "phase": a.pf}[step]


def step(link: MeterLink, name: str, true: float, pf: float = 1.0, seconds: int = 10,
         force: bool = False) -> StepResult:
    """One calibration step (STEPS) against the reference's value `true` (V, A or W; for
    the phase step the reference's PF, `pf` the same), averaged over `seconds`; the error
    before and after. For the phase step the error is the power's, at the reference `pf`."""
    if name not in STEPS:
        raise CalibrationError(f"no step {name!r}: one of {', '.join(STEPS)}")
    if not 1 <= seconds <= 600:
        raise CalibrationError(f"--seconds must be 1..600, not {seconds}")
    if not (math.isfinite(true) and true > 0):
        raise CalibrationError(f"the reference value must be > 0, not {true}: nothing changed")
    if not 0 < abs(pf) <= 1:
        raise CalibrationError(f"--pf must be in (0, 1], not {pf}: nothing changed")
    cal = show(link)
    # seconds that end after `cal` was read are measured with it (the meter applies a
    # calibration to the second it is set in: lib/metro.py Accumulator.result)
    before = average(link, seconds, after_second=link.request(wire.K_READ)["seconds"])
    if name == "phase":
        # the phase step has no reference watts: its error is the PF's
        pf = true
    gains = new_gains(name, true, pf, before, cal, force)
    first = link.request(wire.K_READ)["seconds"]
    new = link.request(wire.K_CALIBRATE, {"op": "set", "v_gain": gains[0], "i_gain": gains[1],
                                          "phase": gains[2], "force": force, "step": name})
    # every second that ends after the set is measured with the new calibration
    after = average(link, seconds, after_second=first + 1)
    m0, m1 = _measured(name, before), _measured(name, after)
    return StepResult(name, true, UNITS.get(name, "PF"), before, after,
                      error_pct(m0, true), error_pct(m1, true), new)
