"""Multi-frame queries over a :class:`MeterLink`: whole logs and load profiles, page by page."""

from __future__ import annotations

from typing import Any

from host_tools.headend import wire
from host_tools.headend.client import MeterLink

PROFILE_FIELDS = ("seq", "t_end", "import_mwh", "export_mwh", "import_wh", "export_wh")


def read_log(link: MeterLink, log: str, from_seq: int = 0,
             max_n: int | None = None) -> list[list[Any]]:
    """Records [seq, t, text] of one log, oldest first, from ``from_seq``."""
    out: list[list[Any]] = []
    nxt = from_seq
    while max_n is None or len(out) < max_n:
        page = link.request(wire.K_LOGS, {"log": log, "from": nxt, "max": 10})
        recs = page["records"]
        if not recs:
            break
        out.extend(recs)
        nxt = int(page["next"])
    return out[:max_n] if max_n else out


def read_profile(link: MeterLink, from_seq: int = 0) -> list[dict[str, int]]:
    """Closed load-profile intervals as dicts (PROFILE_FIELDS), oldest first."""
    out: list[dict[str, int]] = []
    nxt = from_seq
    while True:
        page = link.request(wire.K_PROFILE, {"from": nxt, "max": 12})
        recs = page["records"]
        if not recs:
            return out
        out.extend(dict(zip(PROFILE_FIELDS, r, strict=True)) for r in recs)
        nxt = int(page["next"])
