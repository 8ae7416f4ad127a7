"""Lab truth: a meter's plaintext interval energies, read through its REPL as a test lab
would with a probe. Never part of the WAN protocol; only tests and the demo use it, and every
output that contains it labels it as lab truth.

The probe interrupts the firmware (raw REPL), reads the load profile with the firmware's
own ring log (``meter.profile_ring()``), and soft-resets the board back into ``main.py``: so
it runs after the rounds, once per meter. A sealed meter has no REPL to probe: lab mode works
only while it is unsealed.
"""

from __future__ import annotations

import ast
import contextlib

from host_tools.headend.lopa.headend import LabProbe, Target
from host_tools.transport.serial import HOW_TO_UNSEAL, Board, BoardError, SealedError

# The load profile as firmware/tasks/metrology.py keeps it: PROFILE, PROFILE_CAP, PROFILE_REC,
# records ">IIIII" = t_end, import_mwh, export_mwh, import_wh, export_wh.
# meter.profile_ring(): the file, or with battery-backed RAM the RAM and its snapshots.
PROFILE_CODE = (
    "import struct, meter\n"
    "print(repr([struct.unpack('>IIIII', p)[:2] for s, p in\n"
    "            meter.profile_ring().records()]))\n"
)


def read_profile(port: str, timeout: float = 10.0) -> dict[int, int]:
    """{t_end: import_mwh} of every interval in the meter's load profile (lab truth). Only
    while the meter is unsealed: a sealed meter's REPL is closed (SealedError)."""
    with Board(port, timeout=timeout) as b:
        try:
            b.enter_raw()
        except SealedError:
            raise SealedError(f"{port}: lab mode reads the plaintext truth through the REPL, "
                              "which works only while the meter is unsealed, and this meter is "
                              "sealed; " + HOW_TO_UNSEAL.format(port=port)) from None
        try:
            out = b.exec(PROFILE_CODE, "lab probe: reading the load profile")
        except BaseException:
            with contextlib.suppress(BoardError):
                b.soft_reset_to_main()
            raise
        b.soft_reset_to_main()
    try:
        recs = ast.literal_eval(out.decode().strip())
        return {int(t_end): int(x) for t_end, x in recs}
    except (ValueError, SyntaxError, TypeError) as e:
        raise BoardError(f"{port}: lab probe: unreadable load profile ({e})") from None


def serial_probe(timeout: float = 10.0) -> LabProbe:
    """A lab probe over each meter's serial port (the head-end's links must be closed)."""

    def probe(tgt: Target) -> dict[int, int]:
        return read_profile(tgt.port, timeout)

    return probe

