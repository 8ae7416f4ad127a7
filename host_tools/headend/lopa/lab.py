"""Lab truth: a meter's plaintext interval energies, read as a test lab would with a probe.
Never part of the WAN protocol; only tests and the demo use it, and every output that contains
it labels it as lab truth.

Two probes, chosen per meter by :func:`serial_probe`:

- a virtual meter (one of a fleet's) without battery-backed RAM: its flash is read from the host, as
  a lab reads a chip over SWD, while the firmware runs on. Nothing is interrupted: no energy is
  lost, no boot is logged, no counter is re-reserved (issue 20: the REPL probe's soft reset cost the
  next interval ~40 % of its energy and wrote a false replay alarm);
- any other board, and a virtual meter with battery-backed RAM (its profile is staged there and in
  the RAM's snapshots, firmware/policy.py NVRAM_RINGS): through its REPL. That interrupts the
  firmware (raw REPL), reads the profile with the firmware's own code (``meter.profile_ring()``) and
  soft-resets the board back into ``main.py``, so it runs after the rounds, once per meter; with the
  keystore, the host's command counter is moved above the block the rebooted meter reserved, so the
  next request is not refused as a replay.

A sealed meter is not probed either way: lab mode works only while it is unsealed.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import struct
import threading
from collections.abc import Iterable
from pathlib import Path

from host_tools.headend.keystore import Keystore
from host_tools.headend.lopa.headend import LabProbe, Target
from host_tools.transport.serial import HOW_TO_UNSEAL, Board, BoardError, SealedError

# The load profile as firmware/tasks/metrology.py keeps it: PROFILE, PROFILE_CAP, PROFILE_REC,
# records ">IIIII" = t_end, import_mwh, export_mwh, import_wh, export_wh.
PROFILE_PATH = "/data/profile.bin"
PROFILE_CAP = 192
PROFILE_REC = 32
SEALED_PATH = "/data/sealed"  # firmware/lib/seal.py SEALED
COUNTERS_PATH = "/data/cs_ctr.json"  # firmware/tasks/cs_security.py COUNTERS
PROFILE_CODE = (
    "import struct, meter\n"
    "print(repr([struct.unpack('>IIIII', p)[:2] for s, p in\n"
    "            meter.profile_ring().records()]))\n"
)
# the command counter the meter reserved (it counts every one up to it as used after a boot)
DOWN_EXPR = f"__import__('store').load({COUNTERS_PATH!r}, {{'down': 0}})['down']"

# firmware/lib/ringlog.py's slot: seq u32 | len u16 | payload | zeros | sha256(head)[:4]
_HDR, _SUM = 6, 4


def parse_profile(data: bytes, capacity: int = PROFILE_CAP,
                  rec_size: int = PROFILE_REC) -> dict[int, int]:
    """{t_end: import_mwh} of the valid records of a load-profile ring file (the slot check of
    firmware/lib/ringlog_read.py: a torn slot is skipped, as the meter skips it)."""
    recs: dict[int, tuple[int, int]] = {}
    for slot in range(min(capacity, len(data) // rec_size)):
        s = data[slot * rec_size:(slot + 1) * rec_size]
        seq, n = struct.unpack_from("<IH", s, 0)
        if (seq == 0 or n > rec_size - _HDR - _SUM or (seq - 1) % capacity != slot
                or hashlib.sha256(s[:_HDR + n]).digest()[:_SUM] != s[rec_size - _SUM:]
                or n < 8):
            continue
        t_end, mwh = struct.unpack_from(">II", s, _HDR)
        recs[seq] = (t_end, mwh)
    last = max(recs, default=0)
    return {t: x for seq, (t, x) in sorted(recs.items()) if seq > last - capacity}


def flash_profile(mdir: Path, port: str) -> dict[int, int]:
    """A virtual meter's load profile read from its flash by the host, the firmware running
    on (lab truth). Refused on a sealed meter, as the REPL probe is."""
    from host_tools.sim import fleet

    if fleet.exists(mdir, SEALED_PATH):
        raise SealedError(f"{port}: lab mode reads the plaintext truth only while the meter is "
                          "unsealed, and this meter is sealed; " + HOW_TO_UNSEAL.format(port=port))
    try:
        return parse_profile(fleet.read_file(mdir, PROFILE_PATH))
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise BoardError(f"{port}: lab probe: cannot read the meter's flash ({e})") from None


def read_profile(port: str, timeout: float = 10.0, keystore: Keystore | None = None,
                 meter_id: int | None = None) -> dict[int, int]:
    """{t_end: import_mwh} of every interval in the meter's load profile (lab truth), through
    the REPL: the firmware is interrupted and soft-reset afterwards. Only while the meter is
    unsealed: a sealed meter's REPL is closed (SealedError). With ``keystore`` and
    ``meter_id``, the next command counter is moved above the one the meter reserved."""
    with Board(port, timeout=timeout) as b:
        try:
            b.enter_raw()
        except SealedError:
            raise SealedError(f"{port}: lab mode reads the plaintext truth through the REPL, "
                              "which works only while the meter is unsealed, and this meter is "
                              "sealed; " + HOW_TO_UNSEAL.format(port=port)) from None
        down = 0
        try:
            out = b.exec(PROFILE_CODE, "lab probe: reading the load profile")
            if keystore is not None and meter_id is not None:
                # an int from before roles (the operator's), else one per role
                down = b.eval(DOWN_EXPR, "lab probe: reading the command counter")
        except BaseException:
            with contextlib.suppress(BoardError):
                b.soft_reset_to_main()
            raise
        b.soft_reset_to_main()
    if keystore is not None and meter_id is not None and down:
        keystore.resync_down(meter_id, down)
    try:
        recs = ast.literal_eval(out.decode().strip())
        return {int(t_end): int(x) for t_end, x in recs}
    except (ValueError, SyntaxError, TypeError) as e:
        raise BoardError(f"{port}: lab probe: unreadable load profile ({e})") from None


def virtual_meters(fleets: Iterable[Path]) -> dict[str, Path]:
    """{port: meter directory} of the running virtual meters of ``fleets``."""
    from host_tools.sim import fleet
    from host_tools.sim.fleet import SimError

    found: dict[str, Path] = {}
    for base in fleets:
        with contextlib.suppress(SimError, OSError):
            for st in fleet.status(base):
                if st.get("port") and st.get("dir") and st.get("vm") == "on":
                    found.setdefault(os.path.realpath(str(st["port"])), Path(st["dir"]))
    return found


def serial_probe(timeout: float = 10.0, fleets: Iterable[Path | None] = (),
                 keystore: Keystore | None = None) -> LabProbe:
    """A lab probe for each meter: a virtual meter of ``fleets`` (and of the default fleet
    directory) is read from its flash, the firmware running on; any other through its REPL
    (the head-end's links must be closed; ``keystore`` resyncs its counter afterwards)."""
    from host_tools.sim import fleet

    dirs = [Path(f).resolve() for f in fleets if f is not None]
    dirs.append(fleet.default_dir().resolve())
    where: dict[str, Path] | None = None
    lock = threading.Lock()  # the head-end probes its meters from one thread each

    def probe(tgt: Target) -> dict[int, int]:
        nonlocal where
        with lock:
            if where is None:
                where = virtual_meters(dict.fromkeys(dirs))
        mdir = where.get(os.path.realpath(tgt.port))
        if mdir is not None and not (mdir / "nvram.bin").exists():
            return flash_profile(mdir, tgt.port)
        return read_profile(tgt.port, timeout, keystore, tgt.meter_id)

    return probe
