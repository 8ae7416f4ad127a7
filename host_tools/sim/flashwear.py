"""A virtual meter's flash wear: erase counts per erase unit and the flash life they give.

The VM's flash model (board/virtual/host/flashdev.py) counts every erase of each erase unit
(rp2: 4 KiB block; pybv11: sector) in ``meter-NNN/flash-wear.bin`` as it happens, so the
counts survive power cuts and restarts; ``flash-wear.json`` describes the chip. The life is
the rated erase cycles of the unit erased most, at the rate it has been erased so far:

- W25Q16JV (Raspberry Pi Pico): "Min. 100K Program-Erase cycles per sector" (Winbond
  W25Q16JV datasheet, Features);
- STM32F405 internal flash: N_END 10 kcycles minimum (ST DS8626, "Flash memory endurance and
  data retention").
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

HEAD = struct.Struct("<QQQ")  # programs, bytes programmed, stall microseconds
SECONDS_PER_DAY = 86400.0
SECONDS_PER_YEAR = 365.25 * SECONDS_PER_DAY
RATED = {"W25Q16JV": 100_000, "STM32F405": 10_000}


class WearError(Exception):
    """Unusable wear input, as one printable line."""


def flash_life(counts: list[int], seconds: float, rated: int) -> float:
    """Years until the most-erased unit reaches ``rated`` erases, at the rate of ``counts``
    erases over ``seconds`` of the board's time. inf when nothing was erased."""
    if seconds <= 0:
        raise WearError(f"elapsed time must be > 0 s (got {seconds:g})")
    if rated <= 0:
        raise WearError(f"rated cycles must be > 0 (got {rated})")
    if any(c < 0 for c in counts):
        raise WearError("erase counts cannot be negative")
    worst = max(counts, default=0)
    if worst == 0:
        return float("inf")
    left = max(rated - worst, 0)
    return left / (worst / seconds) / SECONDS_PER_YEAR


def read(mdir: Path) -> dict[str, Any] | None:
    """The meter's wear record, or None when its flash is a host directory (unix profile)."""
    try:
        geo: dict[str, Any] = json.loads((mdir / "flash-wear.json").read_text())
        raw = (mdir / "flash-wear.bin").read_bytes()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise WearError(f"{mdir}: unreadable flash wear ({e})") from None
    units = sum(int(n) for _, n in geo["units"])
    if len(raw) < HEAD.size + 4 * units:
        raise WearError(f"{mdir / 'flash-wear.bin'}: {len(raw)} bytes, short for {units} units")
    progs, prog_bytes, stall_us = HEAD.unpack_from(raw, 0)
    counts = list(struct.unpack_from(f"<{units}I", raw, HEAD.size))
    return {**geo, "counts": counts, "programs": progs, "bytes_programmed": prog_bytes,
            "stall_s": stall_us / 1e6}


def summary(mdir: Path, sim_time: float | None = None, now: float | None = None
            ) -> dict[str, Any] | None:
    """What `sim status` shows: erases (max per unit, total), stall time, and the flash life at
    this write rate. The board's time is the meter's age: from the image's creation to now, or
    along the head-end's clock (set-clock) when both ends of it are known."""
    w = read(mdir)
    if w is None:
        return None
    counts: list[int] = w["counts"]
    start_sim = w.get("created_sim")
    if sim_time is not None and start_sim is not None and sim_time > start_sim:
        seconds = float(sim_time - start_sim)
    else:
        seconds = max((now or time.time()) - float(w["created"]), 1.0)
    worst = max(counts, default=0)
    rated = int(w["rated_cycles"])
    life = flash_life(counts, seconds, rated)
    return {"type": w["type"], "unit": w["unit"], "chip": w.get("chip", ""), "rated": rated,
            "erases_max": worst, "erases_total": sum(counts),
            "worst_unit": counts.index(worst) if worst else None,
            "programs": w["programs"], "bytes_programmed": w["bytes_programmed"],
            "stall_s": round(w["stall_s"], 3), "seconds": round(seconds, 1),
            "erases_per_day_max": round(worst / seconds * SECONDS_PER_DAY, 2),
            "life_years": None if life == float("inf") else round(life, 2)}


def life_line(s: dict[str, Any]) -> str:
    """The one line a human reads."""
    years = "unlimited (no erases yet)" if s["life_years"] is None else f"{s['life_years']:g} years"
    span = s["seconds"]
    over = (f"{span / SECONDS_PER_DAY:.1f} days" if span >= SECONDS_PER_DAY else
            f"{span / 3600:.1f} h" if span >= 3600 else f"{span:.0f} s")
    # the rate of a young image is mostly its formatting: the span says how much to trust it
    return (f"flash life at this write rate: {years} (max erases/day on one {s['unit']}: "
            f"{s['erases_per_day_max']:g}; rated {s['rated'] // 1000}k ({s['chip']}); "
            f"over {over} of board time)")
