"""A head-end that does not play fair (issue 18, Build 8): the attacks of the adversarial suite
(``tests_device/test_adversarial_headend.py``) as plain functions, so that what each attack
computes is written once, apart from the tests that show the meter refusing it.

- **Ghost members**: the head-end makes key pairs of its own for the N-1 other members of a
  group around one real meter; it then knows every pair key of that meter and unmasks its
  reading: ``x = c - r - b`` (``r`` a robust group's RECOVER answer for S empty, its ``C_i``).
- **Four-subset differencing**: four meters and the four 3-member subsets of them as groups;
  ``x_k = (S_1 + S_2 + S_3 + S_4) / 3 - S_k``, ``S_k`` the group without meter k. With each
  aggregate carrying Laplace(lambda) noise, the estimate is left with an error of RMS
  ``lambda * sqrt(14 / 9)``.
- **A chosen ref**: frames no key made whose header names the counter of a genuine command, for
  an authenticated answer bound to that counter.
- **Lab truth** from a virtual meter's flash (its load profile, read on the host: no REPL and no
  soft reset, so the RAM of its rounds survives); only tests use it, and it is labelled so.

Reference math is :mod:`.ref` (``cryptography``), never the firmware's.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from host_tools.headend import wire
from host_tools.headend.lopa import ref
from host_tools.sim import fleet

MASK32 = ref.MASK32
# The load profile as firmware/tasks/metrology.py keeps it (firmware/lib/ringlog.py's slots):
# seq u32 LE | len u16 LE | payload (t_end, import_mwh, export_mwh, import_wh, export_wh: >IIIII)
# | zero padding | sha256(seq + len + payload)[:4]
PROFILE_FILE = "/data/profile.bin"
PROFILE_REC = 32
_HDR = 6
_SUM = 4


@dataclass(frozen=True)
class Ghost:
    """A member the head-end made: its id and its key pair (the private key is the point)."""

    meter_id: int
    sk: bytes
    pk: bytes


def ghosts(count: int, avoid: Sequence[int], seed: bytes = b"ghost") -> list[Ghost]:
    """``count`` ghost members with ids not in ``avoid``, key pairs derived from ``seed``
    (repeatable)."""
    out: list[Ghost] = []
    k = 0
    while len(out) < count:
        k += 1
        mid = int.from_bytes(hashlib.sha256(seed + b"id" + k.to_bytes(4, "big")).digest()[:8],
                             "big") or 1
        if mid in avoid or any(g.meter_id == mid for g in out):
            continue
        sk, pk = ref.keypair(hashlib.sha256(seed + b"sk" + k.to_bytes(4, "big")).digest())
        out.append(Ghost(mid, sk, pk))
    return out


def ghost_group(target_id: int, target_pk: bytes, gs: Sequence[Ghost]) -> list[tuple[int, bytes]]:
    """The member list a ghost group shows the target: itself and the ghosts, by id."""
    return sorted([(target_id, target_pk)] + [(g.meter_id, g.pk) for g in gs])


def ghost_blinding(target_id: int, target_pk: bytes, gs: Sequence[Ghost], gid: bytes,
                   t: int) -> int:
    """The target's blinding b(t), computed from the ghosts' private keys alone."""
    keys = {g.meter_id: ref.pair_key(g.sk, target_pk, gid, g.meter_id, target_id) for g in gs}
    return ref.blinding(keys, target_id, gid, t)


def unmask(c: int, target_id: int, target_pk: bytes, gs: Sequence[Ghost], gid: bytes, t: int,
           recovered: int = 0) -> int:
    """The target's x(t) (plus its noise share, if the group has noise): ``c - r - b``, with
    ``r`` its RECOVER answer for S empty in a robust group (0 in a plain one)."""
    return (c - recovered - ghost_blinding(target_id, target_pk, gs, gid, t)) & MASK32


def four_subsets(ids: Sequence[int], prefix: bytes = b"sub") -> dict[int, tuple[bytes, list[int]]]:
    """{the member left out: (gid, the other three, by id)} for four meters."""
    if len(ids) != 4 or len(set(ids)) != 4:
        raise ValueError("four distinct meters")
    return {k: (prefix + b"-%d" % i, sorted(j for j in ids if j != k))
            for i, k in enumerate(sorted(ids))}


def differencing(aggregates: Mapping[int, int]) -> dict[int, float]:
    """{meter: its reading estimated} from {the member left out: that group's aggregate}:
    ``(S_1 + S_2 + S_3 + S_4) / 3 - S_k``. Aggregates are read as signed (noise may take a
    sum below zero)."""
    s = {k: ref.signed32(v) for k, v in aggregates.items()}
    total = sum(s.values())
    return {k: total / 3 - v for k, v in s.items()}


def rms(values: Sequence[float]) -> float:
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else float("nan")


# The differencing's error in units of lambda: each S_k carries an independent Laplace(lambda)
# (variance 2 lambda^2), and x_k - estimate = N_k - (N_1 + ... + N_4) / 3 has variance
# (4/9 + 3/9) * 2 lambda^2 = 14/9 lambda^2.
DIFFERENCING_RMS_THEORY = math.sqrt(14 / 9)


def keyless_frames(meter_id: int, ctr: int, kind: int = wire.K_READ) -> list[bytes]:
    """Frames no key made, each naming ``ctr`` in its header where a meter takes the ref of its
    answer from: cut short after the counter, cut mid-payload, a wrong version, a length that
    does not match, a reserved flag, and a whole frame with a MAC of zeros."""
    body = b"{}"
    head = struct.pack(">BBBQIIH", wire.VER, kind, 0, meter_id, ctr, 0, len(body))
    whole = head + body + bytes(wire.MAC_LEN)
    return [whole[:15], whole[:25],
            bytes([wire.VER + 1]) + whole[1:],
            head[:19] + struct.pack(">H", len(body) + 5) + body + bytes(wire.MAC_LEN),
            head[:2] + bytes([0x80]) + head[3:] + body + bytes(wire.MAC_LEN),
            whole]


def profile_from_flash(mdir: Path) -> dict[int, int]:
    """LAB TRUTH: {t_end: import_mwh} of every record of a virtual meter's load profile, read
    from its flash on the host (never over the WAN). A slot torn by a write under way fails its
    checksum and is left out, as the firmware leaves it out."""
    raw = fleet.read_file(mdir, PROFILE_FILE)
    out: dict[int, int] = {}
    for off in range(0, len(raw) - PROFILE_REC + 1, PROFILE_REC):
        slot = raw[off:off + PROFILE_REC]
        seq, n = struct.unpack_from("<IH", slot, 0)
        if seq == 0 or n > PROFILE_REC - _HDR - _SUM or n < 8:
            continue
        if hashlib.sha256(slot[:_HDR + n]).digest()[:_SUM] != slot[PROFILE_REC - _SUM:]:
            continue
        t_end, mwh = struct.unpack_from(">II", slot, _HDR)
        out[t_end] = mwh
    return out


def lab_readings(mdir: Path, interval_s: int) -> dict[int, int]:
    """LAB TRUTH by interval index t: the reading x(t) LoPA encrypts (import_mwh of the record
    whose t_end is (t + 1) * interval_s)."""
    return {t_end // interval_s - 1: x for t_end, x in profile_from_flash(mdir).items()}
