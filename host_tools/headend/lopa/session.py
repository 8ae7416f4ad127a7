"""Where ``meterctl headend`` finds its meters, keystore and database.

- ``--ports a,b,c``: those serial ports (each meter as provisioned there, per the keystore);
- ``--dir FLEET``: every running meter of a virtual fleet (``meterctl sim start --dir``); the
  keystore and database then default to the fleet's own ``keystore.json`` and ``headend.db``
  (``make run`` leaves them there) when the fleet has a keystore;
- neither: for ``run``, the ports recorded in the database for the group's members.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from host_tools.headend import wire
from host_tools.headend.client import open_link
from host_tools.headend.keystore import Keystore
from host_tools.headend.lopa.headend import METER_FAILURES, LopaError, Target, targets_from_ports
from host_tools.headend.lopa.state import default_path
from host_tools.sim import fleet
from host_tools.sim.fleet import SimError


@dataclass
class Session:
    ports: list[str] | None  # None: take them from the database
    keystore: Keystore
    db: Path
    virtual: bool  # a fleet of virtual meters (figures are labelled so)

    def targets(self) -> list[Target]:
        if not self.ports:
            raise LopaError("no meters: give --ports a,b,c or --dir FLEET")
        return targets_from_ports(self.ports, self.keystore)

    def platform(self, targets: list[Target]) -> str:
        """What produced the figures: "virtual board", or the board INFO names."""
        if self.virtual:
            return "virtual board"
        for t in targets[:1]:
            with contextlib.suppress(*METER_FAILURES, KeyError, TypeError):
                with open_link(t.port, self.keystore, t.meter_id, timeout=2.0) as link:
                    board = str(link.request(wire.K_INFO)["board"])
                # a virtual meter under a board's profile names that board: its port tells
                virtual = "virtual" in board or (fleet.is_virtual_port(t.port)
                                                 and "emulated" not in board)
                return "virtual board" if virtual else f"board {board}"
        return "platform unknown"


def session(ports: str | None, base: Path | None, keystore: Path | None,
            db: Path | None) -> Session:
    if ports and base:
        raise LopaError("give --ports or --dir, not both")
    port_list: list[str] | None = None
    virtual = False
    if ports:
        port_list = [p.strip() for p in ports.split(",") if p.strip()]
    elif base is not None:
        base = base.resolve()
        try:
            sts = fleet.status(base)
        except SimError as e:
            raise LopaError(str(e)) from None
        # a meter without power keeps its port: the head-end names it when it is silent
        port_list = [str(s["port"]) for s in sts if s.get("port")]
        if not sts:
            raise LopaError(f"no virtual meters in {base}")
        virtual = True
        if keystore is None and (base / "keystore.json").exists():
            keystore = base / "keystore.json"
            if db is None:
                db = base / "headend.db"
    return Session(port_list, Keystore(keystore), db or default_path(), virtual)
