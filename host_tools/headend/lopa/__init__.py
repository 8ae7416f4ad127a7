"""The LoPA head-end (``meterctl headend``): key set-up and aggregation rounds over many
meters at once, with its state in SQLite.

- :mod:`.headend`: the operations S1-S4 (:class:`HeadEnd`), concurrency, resume;
- :mod:`.state`: the SQLite database (default ``~/.local/state/meterctl/headend.db``);
- :mod:`.codec`: the binary payloads of the LoPA kinds (docs/PROTOCOL.md);
- :mod:`.ref`: reference LoPA math on ``cryptography`` (independent of firmware/lib/lopa.py);
- :mod:`.figures`: bytes on the wire and round-trip times per S-test;
- :mod:`.lab`: lab truth through the REPL (tests and demo only, always labelled);
- :mod:`.sim`: simulated meters for host tests and scaling figures;
- :mod:`.report`: tables for the CLI and the demo.
"""

from host_tools.headend.lopa.headend import (
    HeadEnd,
    Hooks,
    LopaError,
    OpResult,
    RoundResult,
    RunResult,
    Target,
    gid_text,
    parse_gid,
    serial_connector,
    targets_from_ports,
)
from host_tools.headend.lopa.state import State, StateError, default_path

__all__ = ["HeadEnd", "Hooks", "LopaError", "OpResult", "RoundResult", "RunResult", "State",
           "StateError", "Target", "default_path", "gid_text", "parse_gid", "serial_connector",
           "targets_from_ports"]
