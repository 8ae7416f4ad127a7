"""A fleet of virtual meters, started, flashed and provisioned, for the campaigns."""

from __future__ import annotations

import concurrent.futures as cf
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from host_tools.flash.deploy import flash
from host_tools.headend.keystore import Keystore
from host_tools.headend.provision import provision
from host_tools.headend.switch import Limits
from host_tools.sim import fleet

T = TypeVar("T")

PLATFORM = "virtual board (MicroPython unix VM on this PC's CPU; never a Pico figure)"


@dataclass
class Meter:
    index: int
    port: str
    meter_id: int
    dir: Path


def say(text: str) -> None:
    """A campaign's progress line: flushed at once, since a long run's output often goes to a
    file or a pipe (block-buffered: a soak's batch lines would show up an hour late)."""
    print(text, flush=True)


def parallel(items: Iterable[T], fn: Callable[[T], Any], workers: int = 8) -> list[Any]:
    """fn over items in threads; results in order; the first exception propagates."""
    items = list(items)
    with cf.ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as ex:
        return list(ex.map(fn, items))


def bring_up(n: int, base: Path, keystore: Keystore, interval_s: int,
             limits: Limits | None = None, time_scale: float | None = None,
             timeout: float = 60.0, workers: int = 8, sim_time: int | None = None,
             profile: str | None = None, board_pools: bool = False) -> list[Meter]:
    """Start ``n`` meters in ``base`` under port profile ``profile`` (None: the fleet's
    default, a Pico; ``time_scale``: the virtual RTC's rate; ``sim_time``: the RTCs held at
    this time, which only the host moves on, with the supervisor's set-clock; see
    host_tools/sim/supervisor.py; ``board_pools``: fleet.start's), flash and provision each;
    the fleet is stopped if any step fails."""
    recs = fleet.start(n, base, timeout=timeout, time_scale=time_scale, profile=profile,
                       board_pools=board_pools)
    try:
        def one(rec: dict[str, Any]) -> Meter:
            port = str(rec["port"])
            if sim_time is not None:
                fleet.ctl(Path(rec["dir"]), {"cmd": "set-clock", "t": sim_time})
            flash(port, timeout=timeout)
            # A fast or a host-paced RTC needs no setting (a fast one started at host time
            # when its supervisor did: setting it to host time now would move it back).
            p = provision(port, keystore, force=True, interval_s=interval_s, timeout=timeout,
                          offswitch_limits=limits,
                          set_time=time_scale is None and sim_time is None)
            return Meter(int(rec["id"]), port, p.meter_id, Path(rec["dir"]))

        # The first alone: it fills the build cache (host_tools/flash/build.py), so the
        # others don't all compile the same files at once.
        return [one(recs[0]), *parallel(recs[1:], one, workers)] if recs else []
    except BaseException:
        fleet.stop(base)
        raise


def spread(values: list[float], unit: str = "s", digits: int = 2) -> str:
    """min / median / max of a figure, for the printed reports."""
    if not values:
        return "-"
    f = f"{{:.{digits}f}}"
    return (f"min {f.format(min(values))} / median {f.format(statistics.median(values))} / "
            f"max {f.format(max(values))} {unit} (n={len(values)})")
