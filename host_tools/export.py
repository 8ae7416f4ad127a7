"""Load profile and log export: CSV files and a PNG bar chart (matplotlib, Agg backend).

Times are written twice, as ISO-8601 UTC and as Unix epoch seconds, so a spreadsheet and a
script both read them without conversion."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

PROFILE_CSV_HEADER = ("seq", "t_end_utc", "t_end_epoch", "import_mwh", "export_mwh",
                      "import_kwh", "export_kwh")
LOGS_CSV_HEADER = ("seq", "t_utc", "t_epoch", "text")


class ExportError(Exception):
    """An output file that cannot be written; the message is one line."""


def iso_utc(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kwh(mwh: int) -> str:
    """Milliwatt-hours as kWh, exactly (6 decimals: 1 mWh is 1e-6 kWh)."""
    sign = "-" if mwh < 0 else ""
    return f"{sign}{abs(mwh) // 1_000_000}.{abs(mwh) % 1_000_000:06d}"


def check_writable(path: Path) -> None:
    """Refuse, before anything is read from a meter, a path the file cannot be written to."""
    if path.is_dir():
        raise ExportError(f"{path}: is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(f"{path}: no such directory {parent}")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ExportError(f"{path}: not writable")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"{path}: directory {parent} is not writable")


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces it only once complete: an interrupted
    export leaves the old file (or none), never half a table."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_profile_csv(recs: Sequence[dict[str, int]], path: Path) -> int:
    """One row per closed interval (records as read_profile returns them); returns the rows."""
    with _atomic(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PROFILE_CSV_HEADER)
        for r in recs:
            w.writerow((r["seq"], iso_utc(r["t_end"]), r["t_end"], r["import_mwh"],
                        r["export_mwh"], kwh(r["import_mwh"]), kwh(r["export_mwh"])))
    return len(recs)


def write_logs_csv(recs: Sequence[Sequence[Any]], path: Path) -> int:
    """One row per log record [seq, t, text]; returns the rows."""
    with _atomic(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LOGS_CSV_HEADER)
        for seq, t, text in recs:
            w.writerow((seq, iso_utc(int(t)), t, text))
    return len(recs)


def write_profile_png(recs: Sequence[dict[str, int]], path: Path, meter_id: int) -> None:
    """Import and export per interval as side-by-side bars, in kWh, against interval end."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file, on any machine
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    try:
        xs = range(len(recs))
        width = 0.4
        ax.bar([x - width / 2 for x in xs], [r["import_mwh"] / 1e6 for r in recs], width,
               label="import", color="tab:red")
        ax.bar([x + width / 2 for x in xs], [r["export_mwh"] / 1e6 for r in recs], width,
               label="export", color="tab:green")
        step = max(1, len(recs) // 12)  # at most about 12 tick labels
        ticks = list(xs)[::step]
        ax.set_xticks(ticks, [iso_utc(recs[i]["t_end"])[5:16].replace("T", " ") for i in ticks],
                      rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("interval end (UTC)")
        ax.set_ylabel("energy per interval (kWh)")
        ax.set_title(f"load profile, meter {meter_id}")
        if recs:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no closed intervals", transform=ax.transAxes, ha="center")
        fig.tight_layout()
        with _atomic(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
