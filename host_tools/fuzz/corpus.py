"""Seed corpora for the fuzz targets, made with the host codecs (``headend/wire.py``,
``headend/lopa/codec.py``, ``headend/switch.py``), so that the VM gets valid frames with valid
MACs and well-formed LoPA requests to mutate.

:func:`sample_payloads` is also the replay and forgery suite's source of one well-formed
command per WAN kind (``tests_device/test_forgery.py``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from host_tools.headend import switch, wire
from host_tools.headend.lopa import codec

METER_ID = 0x4D45_5445_5200_0001
MASTER = hashlib.sha256(b"fuzz wan master").digest()
OS_KEY = hashlib.sha256(b"fuzz offswitch key").digest()
DOWN = 1000  # the meter's down counter when a run starts
GID = b"fuzz-g"
RGID = b"fuzz-r"
T0 = 100  # the recovery target's first interval

# Dictionary tokens for the JSON kinds: the argument names the firmware reads, and values that
# are valid JSON but odd for it (huge, negative, infinite, nested, the wrong type).
JSON_TOKENS = [
    b"1e400", b"-1e400", b"1e308", b"-1", b"0", b"9" * 30, b"0.5", b"null", b"true", b"false",
    b"[", b"]", b"{", b"}", b'"', b":", b",", b"[1]", b"5", b'"x"', b"{}", b"[]", b"[[[[[[",
    b'"from"', b'"max"', b'"log"', b'"t"', b'"volts"', b'"amps"', b'"pf"', b'"amount_mc"',
    b'"t1_mc_kwh"', b'"t2_mc_kwh"', b'"t2_from_h"', b'"t2_to_h"', b'"tz_s"', b'"eu_dst"',
    b'"weekend_t1"', b'"on"', b'"metrology"', b'"offswitch"', b'"security"', b"\\u0000",
    b"\xff", b"\x00",
]


def _sk(name: str) -> bytes:
    return hashlib.sha256(b"fuzz sk " + name.encode()).digest()


def public_key(sk: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes_raw()


@dataclass(frozen=True)
class Group:
    """A group of 4 for the DC module's targets: this meter first, then three others."""

    members: list[tuple[int, bytes]]  # (id, public key)
    sk: bytes  # this meter's private key

    @classmethod
    def make(cls) -> Group:
        sk = _sk("me")
        ids = [METER_ID, METER_ID + 7, METER_ID - 5, 0x0102_0304_0506_0708]
        pks = [public_key(sk)] + [public_key(_sk(f"other {k}")) for k in range(3)]
        return cls(list(zip(ids, pks, strict=True)), sk)

    def chunks(self, gid: bytes) -> list[bytes]:
        # seq 0: this meter alone (no derivation); seq 1: two others; seq 2: the last one
        m = self.members
        return [codec.group_keys_cmd(gid, 0, m[:1]), codec.group_keys_cmd(gid, 1, m[1:3]),
                codec.group_keys_cmd(gid, 2, m[3:])]


def sample_payloads(os_keys: switch.OsKeys, os_ctr: int, t_now: int) -> dict[int, bytes]:
    """One well-formed command payload for every WAN kind the meter accepts (the SWITCH one
    carries an authentic UNLOCK under ``os_keys`` with counter ``os_ctr``), chosen to be
    harmless when the meter accepts it: reads, the time it already has, requests that the task
    behind refuses. A kind missing here is a kind the forgery suite does not cover."""
    j = json.dumps
    g = Group.make()
    out = {
        wire.K_INFO: b"",
        wire.K_READ: b"",
        wire.K_PROFILE: j({"from": 0, "max": 2}).encode(),
        wire.K_LOGS: j({"log": "metrology", "from": 0, "max": 1}).encode(),
        wire.K_TIME_SET: j({"t": t_now}).encode(),
        wire.K_CALIBRATE: b"{}",  # no volts: BAD_ARGS, calibration untouched
        wire.K_STATS: b"",
        wire.K_KEYGEN: codec.keygen_cmd(False),  # keeps an existing key pair
        wire.K_PUBKEY: b"",
        wire.K_GROUP_BEGIN: codec.group_begin_cmd(GID, 2, 0, 0.0),  # n 2: refused
        wire.K_GROUP_KEYS: g.chunks(GID)[0],  # no pending set-up: refused
        wire.K_GROUP_COMMIT: codec.group_commit_cmd(GID),
        wire.K_CIPHERTEXT: codec.ciphertext_cmd(GID, 1),  # unknown group: refused
        wire.K_RECOVER: codec.recover_cmd(GID, 1, []),
        wire.K_GROUPS: b"",
        wire.K_GROUP_DELETE: codec.group_delete_cmd(GID),  # unknown group: refused
        wire.K_SWITCH: switch.command(os_keys, switch.OP_UNLOCK, os_ctr),  # "not locked"
        wire.K_SWITCH_STATUS: bytes(range(8)),  # a nonce
        wire.K_TOPUP: j({"amount_mc": 0}).encode(),  # out of range: refused
        wire.K_TARIFF: j({"t1_mc_kwh": -1, "t2_mc_kwh": 0}).encode(),  # out of range
        wire.K_CREDIT: b"",
        wire.K_PREPAID: b"{}",  # no "on": BAD_ARGS
    }
    # Sealing (headend/seal.py): no payload. SEAL before UNSEAL in kind order, so a run over
    # every kind leaves the meter as unsealed as it found it.
    for name in ("K_SEAL", "K_UNSEAL"):
        k = getattr(wire, name, None)
        if k is not None:
            out[k] = b""
    return out


def _fuzz_payloads() -> list[tuple[int, bytes]]:
    # what the parser target starts from: every kind, with arguments that go deep
    os_keys = switch.OsKeys.derive(METER_ID, OS_KEY)
    out = list(sample_payloads(os_keys, 5, 1_700_000_000).items())
    g = Group.make()
    j = json.dumps
    out += [
        (wire.K_PROFILE, j({"from": 3, "max": 12}).encode()),
        (wire.K_LOGS, j({"log": "security", "from": 0, "max": 10}).encode()),
        (wire.K_CALIBRATE, j({"volts": 230, "amps": 5, "pf": 0.9}).encode()),
        (wire.K_TOPUP, j({"amount_mc": 1000}).encode()),
        (wire.K_TARIFF, j({"t1_mc_kwh": 21000, "t2_mc_kwh": 25000, "t2_from_h": 7,
                           "t2_to_h": 23, "tz_s": 3600, "eu_dst": True,
                           "weekend_t1": True}).encode()),
        (wire.K_PREPAID, j({"on": True}).encode()),
        (wire.K_GROUP_BEGIN, codec.group_begin_cmd(GID, 4, 1, 2.5)),
        (wire.K_GROUP_KEYS, g.chunks(GID)[1]),
        (wire.K_RECOVER, codec.recover_cmd(GID, 7, [g.members[1][0]])),
        (wire.K_SWITCH, switch.command(os_keys, switch.OP_OFF, 9)),
    ]
    return out


def config(target: str, n: int, seed: int, tmpdir: str, hang_ms: int) -> dict[str, Any]:
    """The VM driver's configuration for one batch of ``n`` inputs of ``target``."""
    cfg: dict[str, Any] = {"target": target, "n": n, "seed": seed, "dir": tmpdir,
                           "hang_ms": hang_ms, "meter": METER_ID, "master": MASTER.hex(),
                           "down": DOWN, "tokens": [t.hex() for t in JSON_TOKENS]}
    keys = wire.Keys.derive(METER_ID, MASTER)
    if target == "wan":
        cfg["seeds"] = [[k, p.hex()] for k, p in _fuzz_payloads()]
    elif target == "verify":
        seeds = _fuzz_payloads()
        frames = []
        for i in range(max(8, n // 20)):
            kind, payload = seeds[i % len(seeds)]
            frames.append(wire.seal(keys, False, kind, DOWN + 1 + i, 0, payload,
                                    encrypt=bool(i & 1)))
        other_meter = wire.Keys.derive(METER_ID + 1, MASTER)
        other_key = wire.Keys.derive(METER_ID, hashlib.sha256(b"another key").digest())
        foreign = [wire.seal(k, up, wire.K_READ, DOWN + 50, 0, b"")
                   for k, up in ((other_meter, False), (other_key, False))]
        foreign.append(wire.seal(keys, True, wire.K_READ, DOWN + 60, 0, b"{}"))  # reflected
        cfg["frames"] = [f.hex() for f in frames]
        cfg["foreign"] = [f.hex() for f in foreign]
    elif target in ("chunk", "recover"):
        g = Group.make()
        cfg["sk"] = g.sk.hex()
        cfg["pk"] = g.members[0][1].hex()
        gid = GID if target == "chunk" else RGID
        cfg["gid"] = gid.hex()
        cfg["gids"] = [gid.hex()]
        cfg["begin"] = codec.group_begin_cmd(gid, 4, 0 if target == "chunk" else 2, 0.0).hex()
        cfg["chunks"] = [c.hex() for c in g.chunks(gid)]
        cfg["commit"] = codec.group_commit_cmd(gid).hex()
        ids = [mid for mid, _ in g.members]
        low_order = codec.group_keys_cmd(gid, 2, [(ids[3], bytes(32))])
        cfg["extra"] = [low_order.hex(), codec.group_delete_cmd(gid).hex(),
                        codec.group_begin_cmd(gid, 512, 200, 1e30).hex()]
        cfg["t0"] = T0
        cfg["seeds"] = [codec.recover_cmd(gid, T0 + t, miss).hex()
                        for t in (0, 3, 14, 15, 16)
                        for miss in ([], [ids[1]], [ids[2], ids[3]], [ids[0]],
                                     [ids[1], ids[2], ids[3]], [ids[1], ids[1]])]
        cfg["tokens"] = [t.hex() for t in (gid, bytes((len(gid),)) + gid,
                                           *(i.to_bytes(8, "big") for i in ids))]
    else:
        raise ValueError(f"unknown fuzz target {target!r}")
    return cfg
