"""``meterctl seal`` / ``unseal``: close or open a provisioned meter's REPL (docs/SECURITY.md
"Sealed meters", docs/PROTOCOL.md "Seal kinds").

On a board the USB serial carries both the WAN link and the REPL, and a REPL is full control.
SEAL makes the meter turn Ctrl-C off for good (persisted: it stays sealed across power cuts), so
that nothing over the wire reaches the REPL and no file can be written: mpremote and
``meterctl flash`` are refused by the board itself. UNSEAL, like every WAN command, is
authenticated with the meter's key and replay-protected; a technician on site can also unseal
with the service input behind the sealed terminal cover (the cover open AND the service jumper
fitted at power-up); the household's reconnect button never unseals. Both are written to the
meter's security log and shown in the HAN telegram.
"""

from __future__ import annotations

from typing import Any

from host_tools.headend import wire
from host_tools.headend.client import LinkError, MeterLink


def seal(link: MeterLink) -> dict[str, Any]:
    """Seal the meter on ``link``; returns its answer, ``{"sealed": true}``."""
    return _set(link, wire.K_SEAL, True)


def unseal(link: MeterLink) -> dict[str, Any]:
    """Unseal the meter on ``link``: its REPL answers Ctrl-C again."""
    return _set(link, wire.K_UNSEAL, False)


def is_sealed(link: MeterLink) -> bool:
    """Whether the meter says it is sealed (INFO)."""
    info = link.request(wire.K_INFO)
    return bool(info.get("sealed"))


def _set(link: MeterLink, kind: int, on: bool) -> dict[str, Any]:
    ans = link.request(kind)
    if not isinstance(ans, dict) or ans.get("sealed") is not on:
        raise LinkError(f"meter {link.entry.meter_id}: unexpected answer to "
                        f"{wire.KIND_NAMES[kind]}: {ans!r}")
    return ans
