"""The neutral registrar (issue 18, Build 1): a role apart from the head-end, with its own secret
and its own keystore, that certifies each meter's LoPA public key and sets the group policy.

- ``init`` makes the registrar's secret and its default policy (one JSON file, mode 0600, at
  ``$METERCTL_REGISTRAR`` or ``~/.config/meterctl/registrar.json``; never the head-end's).
- ``register`` (a factory step over the REPL, like ``meterctl provision``) reads the meter's id
  and LoPA public key (the key pair made on the meter), records (id, key), and installs on the
  meter its trust anchor ``K_reg(id) = HMAC-SHA256(secret, "lopa-registrar" + id u64)``, a key
  this meter shares with the registrar alone, and the policy (min group size, lambda_min,
  epsilon_max, the sensitivity delta) in ``/data/lopa_reg.bin``.
- ``approve`` is the registrar's answer to a head-end that wants a group: it checks that every
  member's (id, key) is one it registered, and the policy, and gives each member meter its tag
  ``HMAC-SHA256(K_reg(id), "lopa-group" + gid_len + gid + n u16 + m u8 + lambda f32 + h)``,
  ``h`` the member list's digest (``member_digest``). The head-end passes each meter its tag in
  GROUP_COMMIT; a meter with an anchor commits a group only with a tag that matches
  (``firmware/tasks/dc_setup.py``). Why a MAC and not a signature: docs/SECURITY.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import math
import os
import secrets
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host_tools.headend.keystore import check_private

REG_FILE = "/data/lopa_reg.bin"
KEY_FILE = "/data/dc_key.bin"
MAX_N = 512


class RegistrarError(Exception):
    """Refused or failed; the message says why."""


def default_path() -> Path:
    env = os.environ.get("METERCTL_REGISTRAR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "meterctl" / "registrar.json"


def f32(x: float) -> float:
    """x as the meter holds it (a 32-bit float on the wire)."""
    v: float = struct.unpack(">f", struct.pack(">f", x))[0]
    return v


@dataclass(frozen=True)
class Policy:
    min_n: int
    lambda_min: float  # mWh: the least Laplace scale of any aggregate
    epsilon_max: float  # the privacy loss a meter may take on per interval, over its groups
    sensitivity: float  # mWh: the most one household's interval value can move (delta)

    def check(self) -> None:
        if not 3 <= self.min_n <= MAX_N:
            raise RegistrarError(f"min group size {self.min_n} outside 3..{MAX_N}")
        if not (math.isfinite(self.lambda_min) and self.lambda_min > 0):
            raise RegistrarError(f"lambda_min must be > 0, not {self.lambda_min}")
        if not (math.isfinite(self.epsilon_max) and self.epsilon_max > 0):
            raise RegistrarError(f"epsilon_max must be > 0, not {self.epsilon_max}")
        if not (math.isfinite(self.sensitivity) and self.sensitivity > 0):
            raise RegistrarError(f"sensitivity must be > 0, not {self.sensitivity}")
        if self.sensitivity / self.lambda_min > self.epsilon_max:
            raise RegistrarError(f"a group at lambda_min {self.lambda_min:g} would need "
                                 f"epsilon {self.sensitivity / self.lambda_min:g}, above "
                                 f"epsilon_max {self.epsilon_max:g}")

    def to_json(self) -> dict[str, Any]:
        return {"min_n": self.min_n, "lambda_min": self.lambda_min,
                "epsilon_max": self.epsilon_max, "sensitivity": self.sensitivity}


# The defaults (docs/SECURITY.md, "The privacy budget"): a sum over at least 5 households; one
# household moves an interval's value by at most delta = 230 V x 25 A (a main fuse) x 15 min =
# 1437.5 Wh; each aggregate's noise at least that (epsilon 1 per group), and at most 4 such
# groups per interval for one meter (epsilon_max 4).
DEFAULT_POLICY = Policy(5, 1_437_500.0, 4.0, 1_437_500.0)


def member_digest(members: list[tuple[int, bytes]]) -> bytes:
    """The member list's digest as a meter computes it while the chunks arrive: from 32 zero
    bytes, h = SHA-256(h + id u64 + pk 32) per member, in ascending id order (the order the
    head-end sends them in)."""
    h = bytes(32)
    for mid, pk in sorted(members):
        h = hashlib.sha256(h + struct.pack(">Q", mid) + pk).digest()
    return h


def group_tag(key: bytes, gid: bytes, n: int, m: int, lam: float, digest: bytes) -> bytes:
    msg = b"lopa-group" + bytes((len(gid),)) + gid + struct.pack(">HBf", n, m, lam) + digest
    return hmac.new(key, msg, hashlib.sha256).digest()


class Registrar:
    def __init__(self, path: Path | None = None) -> None:
        self.path = (path or default_path()).expanduser()

    # -- the file: locked read-modify-write, atomic replace, mode 0600 --------------------------
    @contextlib.contextmanager
    def _locked(self, create: bool = False) -> Iterator[dict[str, Any]]:
        if not create and not self.path.exists():
            raise RegistrarError(f"{self.path}: no registrar here; run `meterctl registrar "
                                 "init` first")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read() if self.path.exists() else {}
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                self._write(data)
        finally:
            os.close(lock)

    def _read(self) -> dict[str, Any]:
        try:
            check_private(self.path, self.path.stat().st_mode)
            data = json.loads(self.path.read_text())
        except OSError as e:
            raise RegistrarError(f"{self.path}: cannot read ({e.strerror})") from None
        except ValueError as e:
            raise RegistrarError(f"{self.path}: not a registrar file ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("meters"), dict) \
                or not isinstance(data.get("secret"), str):
            raise RegistrarError(f"{self.path}: not a registrar file")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # -- the registrar's operations --------------------------------------------------------------
    def init(self, policy: Policy | None = None) -> Policy:
        p = policy or DEFAULT_POLICY
        p.check()
        with self._locked(create=True) as data:
            if data:
                raise RegistrarError(f"{self.path}: a registrar exists already (its secret "
                                     "anchors every registered meter; not replaced)")
            data.update({"version": 1, "secret": secrets.token_bytes(32).hex(),
                         "policy": p.to_json(), "meters": {}})
        return p

    def policy(self, new: Policy | None = None) -> Policy:
        """The policy; with ``new``, set it (meters get it when (re-)registered)."""
        with self._locked() as data:
            if new is not None:
                new.check()
                data["policy"] = new.to_json()
            d = data["policy"]
            return Policy(int(d["min_n"]), float(d["lambda_min"]), float(d["epsilon_max"]),
                          float(d["sensitivity"]))

    def meter_key(self, meter_id: int) -> bytes:
        with self._locked() as data:
            secret = bytes.fromhex(data["secret"])
        return hmac.new(secret, b"lopa-registrar" + struct.pack(">Q", meter_id),
                        hashlib.sha256).digest()

    def anchor(self, meter_id: int) -> bytes:
        """What a meter gets in /data/lopa_reg.bin: K_reg(id), min_n u16, lambda_min f32,
        epsilon_max f32, sensitivity f32 (46 bytes)."""
        p = self.policy()
        return self.meter_key(meter_id) + struct.pack(">Hfff", p.min_n, p.lambda_min,
                                                      p.epsilon_max, p.sensitivity)

    def record(self, meter_id: int, pk: bytes) -> None:
        """Certify (id, LoPA public key): the registrar's own record of it."""
        if len(pk) != 32 or not 0 < meter_id < 2**64:
            raise RegistrarError("a meter id (u64) and a 32-byte public key are needed")
        with self._locked() as data:
            data["meters"][str(meter_id)] = {"pk": pk.hex(),
                                             "registered": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def registered(self) -> dict[int, bytes]:
        with self._locked() as data:
            return {int(k): bytes.fromhex(v["pk"]) for k, v in data["meters"].items()}

    def approve(self, gid: bytes, m: int, lam: float,
                members: list[tuple[int, bytes]]) -> dict[int, bytes]:
        """Each member meter's tag for the group, if every (id, key) is registered and the
        policy holds; else RegistrarError naming the first reason."""
        if not 1 <= len(gid) <= 16:
            raise RegistrarError("gid must be 1..16 bytes")
        reg = self.registered()
        p = self.policy()
        n = len(members)
        ids = [mid for mid, _ in members]
        if len(set(ids)) != n:
            raise RegistrarError("a member id appears twice")
        for mid, pk in members:
            if mid not in reg:
                raise RegistrarError(f"member {mid} is not registered: a meter the registrar "
                                     "never certified (a ghost?)")
            if reg[mid] != pk:
                raise RegistrarError(f"member {mid}: its key is not the one registered")
        if n < p.min_n:
            raise RegistrarError(f"{n} members below the policy's minimum {p.min_n}")
        if m and not 1 <= m <= n - 2:
            raise RegistrarError(f"m {m} outside 1..n-2")
        if not math.isfinite(lam) or f32(lam) < f32(p.lambda_min):
            raise RegistrarError(f"lambda {lam} below the policy's minimum {p.lambda_min}")
        h = member_digest(members)
        return {mid: group_tag(self.meter_key(mid), gid, n, m, f32(lam), h) for mid in ids}


# -- register: over the REPL, a factory step --------------------------------------------------
_READ = (
    "import store\n"
    "k = store.load('/data/cs_keys.json', None)\n"
    f"p = store.load_bytes({KEY_FILE!r}, None)\n"
    "print(repr((k['meter'] if k else None, bytes(p[32:64]).hex() if p and len(p) == 64 "
    "else None)))\n"
)


def register(port: str, registrar: Registrar, timeout: float = 10.0) -> tuple[int, bytes]:
    """Read the meter's id and LoPA public key over the REPL, record them, install the trust
    anchor and policy; the meter is soft-reset into its firmware after."""
    import ast

    from host_tools.transport.serial import Board, resolve_port

    port = resolve_port(port)
    registrar.policy()  # no registrar: refused before the board is touched
    with Board(port, timeout=timeout) as b:
        b.enter_raw()
        try:
            found = ast.literal_eval(b.exec(_READ, "reading the meter's id and key")
                                     .decode().strip())
            meter_id, pk_hex = found
            if meter_id is None:
                raise RegistrarError(f"{port}: the meter is not provisioned; run `meterctl "
                                     "provision` first")
            if pk_hex is None:
                raise RegistrarError(f"{port}: meter {meter_id} has no LoPA key pair yet; "
                                     "make it on the meter (KEYGEN) first")
            pk = bytes.fromhex(pk_hex)
            anchor = registrar.anchor(int(meter_id))
            registrar.record(int(meter_id), pk)  # the registrar's record first
            b.exec(f"import store\nstore.save_bytes({REG_FILE!r}, "
                   f"bytes.fromhex({anchor.hex()!r}))\n", "installing the registrar's anchor")
        finally:
            b.soft_reset_to_main()
    return int(meter_id), pk
