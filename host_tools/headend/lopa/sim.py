"""Simulated meters for the head-end: the DC security module's rules (docs/PROTOCOL.md, "LoPA
kinds") on the reference math of :mod:`host_tools.headend.lopa.ref`, behind a link with
:class:`~host_tools.headend.lopa.headend.Link`'s shape, on a simulated clock.

For host tests and head-end scaling figures without VMs (hundreds of members in a second).
Byte counts are those of the real frame lines (header, MAC, escapes, line end), so they match
what the same exchange costs on a serial line.
"""

from __future__ import annotations

import random
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from host_tools.headend import wire
from host_tools.headend.client import LinkError, MeterError
from host_tools.headend.lopa import codec, ref
from host_tools.headend.lopa.headend import Connector, LabProbe, Link, Target

PROFILE_CAP = 192


_LINE_KEYS = wire.Keys.derive(1, bytes(32), wire.ROLE_AGGREGATOR)


def line_len(payload: bytes, up: bool = False, encrypt: bool = False) -> int:
    """Bytes of the line of a frame carrying ``payload``, "~" and newline included: the frame
    sealed under a fixed key and escaped as a real one is (docs/PROTOCOL.md "Lines"), so the
    escapes of its header, payload and MAC count too."""
    return len(wire.to_line(wire.seal(_LINE_KEYS, up, wire.K_INFO, 1, 1 if up else 0,
                                      payload, encrypt)))


class SimClock:
    """Time for a simulated fleet; ``sleep`` advances it at once."""

    def __init__(self, start: float = 1_700_000_000.25) -> None:
        self.t = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self.t

    def sleep(self, s: float) -> None:
        with self._lock:
            self.t += max(0.0, s)


@dataclass
class _Setup:
    gid: bytes
    n: int
    m: int
    lam: float
    seq: int = 0
    ids: list[int] = field(default_factory=list)
    keys: dict[int, bytes] = field(default_factory=dict)


@dataclass
class _Group:
    gid: bytes
    n: int
    m: int
    lam: float
    ids: list[int]
    keys: dict[int, bytes]
    first: int = 0  # the interval its commit came in, on the meter's own clock: its first value


@dataclass
class _Value:
    c: int
    secret: int  # C_i(t), robust groups only
    sent: bool = False
    answered: bool = False


def default_reading(meter_id: int, t: int) -> int:
    """A plausible interval import in mWh, fixed by (meter, t)."""
    return 200 + zlib.crc32(f"{meter_id}:{t}".encode()) % 40_000


class SimMeter:
    def __init__(self, meter_id: int, clock: SimClock, length: int = 3, seed: int = 0,
                 reading: Callable[[int, int], int] = default_reading) -> None:
        self.meter_id = meter_id
        self.clock = clock
        self.length = length
        self.rng = random.Random(seed)
        self.reading = reading
        self.sk: bytes | None = None
        self.pk: bytes | None = None
        self.groups: dict[bytes, _Group] = {}
        self.pending: _Setup | None = None
        self.values: dict[tuple[bytes, int], _Value] = {}
        self.up = True  # False: silent, like a meter without power
        self.late_s = 0.0  # its clock this far behind: a starved meter closes intervals late
        self.fake_pk: bytes | None = None  # answer this instead of the real key (bad meter)
        self.log: list[str] = []
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    # -- the meter's side -----------------------------------------------------------------
    def _refuse(self, code: int, text: str) -> MeterError:
        self.log.append(text)
        return MeterError(code, text, f"meter {self.meter_id}: refused: {text}")

    def interval(self) -> tuple[int, int]:
        """(index, start) of the open interval."""
        now = int(self.clock.now() - self.late_s)
        return now // self.length, now - now % self.length

    def handle(self, kind: int, payload: bytes) -> bytes:
        with self._lock:
            self.received.append((wire.KIND_NAMES.get(kind, hex(kind)), payload))
            try:
                return self._handle(kind, payload)
            except codec.CodecError as e:
                raise self._refuse(wire.E_BAD_ARGS, str(e)) from None

    def _handle(self, kind: int, p: bytes) -> bytes:
        if kind == wire.K_KEYGEN:
            if len(p) != 1:
                raise self._refuse(wire.E_BAD_ARGS, "KEYGEN: flags")
            created = self.sk is None or bool(p[0] & 1)
            if created:
                self.sk, self.pk = ref.keypair(self.rng.randbytes(32))
            assert self.pk is not None
            return codec.keygen_resp(self.fake_pk or self.pk, 1000, created)
        if kind == wire.K_PUBKEY:
            if self.pk is None:
                raise self._refuse(wire.E_FAILED, "no key pair")
            return codec.pubkey_resp(self.fake_pk or self.pk, 10)
        if kind == wire.K_GROUP_BEGIN:
            gid, n, m, lam = codec.parse_group_begin_cmd(p)
            if not codec.N_MIN <= n <= codec.N_MAX or (m and not 1 <= m <= n - 2) or lam < 0:
                raise self._refuse(wire.E_BAD_ARGS, "GROUP_BEGIN: n, m or lambda out of range")
            if self.sk is None:
                raise self._refuse(wire.E_FAILED, "no key pair")
            self.pending = _Setup(gid, n, m, lam)
            return codec.us_resp(5)
        if kind == wire.K_GROUP_KEYS:
            return self._group_keys(p)
        if kind == wire.K_GROUP_COMMIT:
            gid, rest = codec.dec_gid(p)
            s = self.pending
            # the registrar's tag (32 bytes) is what a meter with its anchor checks
            # (firmware/tasks/dc_setup.py); this model, like a meter without one, ignores it
            if len(rest) not in (0, 32) or s is None or s.gid != gid:
                raise self._refuse(wire.E_FAILED, "no pending set-up")
            if len(s.ids) != s.n or self.meter_id not in s.ids:
                raise self._refuse(wire.E_FAILED, "commit before all members arrived")
            self.groups[gid] = _Group(gid, s.n, s.m, s.lam, list(s.ids), dict(s.keys),
                                      self.interval()[0])
            self.pending = None
            return codec.group_commit_resp(s.n, 700 * (s.n - 1), 64 + 40 * s.n)
        if kind == wire.K_CIPHERTEXT:
            gid, t = codec.parse_ciphertext_cmd(p)
            v = self._value(gid, t)
            v.sent = True
            return codec.value_resp(t, v.c)
        if kind == wire.K_RECOVER:
            return self._recover(p)
        raise self._refuse(wire.E_UNKNOWN_KIND, f"kind 0x{kind:02x}")

    def _group_keys(self, p: bytes) -> bytes:
        gid, seq, members = codec.parse_group_keys_cmd(p)
        s = self.pending
        if s is None or s.gid != gid:
            raise self._refuse(wire.E_FAILED, "no pending set-up")
        if seq != s.seq:
            raise self._refuse(wire.E_BAD_ARGS, f"chunk {seq} out of order (expected {s.seq})")
        if not 1 <= len(members) <= codec.CHUNK_MAX or len(s.ids) + len(members) > s.n:
            raise self._refuse(wire.E_BAD_ARGS, "wrong count")
        ids = [i for i, _ in members]
        if len(set(ids)) != len(ids) or set(ids) & set(s.ids):
            raise self._refuse(wire.E_BAD_ARGS, "duplicate member id")
        assert self.sk is not None and self.pk is not None
        keys: dict[int, bytes] = {}
        for i, pk in members:
            if (i == self.meter_id) != (pk == self.pk):
                raise self._refuse(wire.E_BAD_ARGS, "own key under another id")
            if i != self.meter_id:
                try:
                    keys[i] = ref.pair_key(self.sk, pk, gid, self.meter_id, i)
                except ref.BadPublicKey as e:
                    raise self._refuse(wire.E_BAD_ARGS, str(e)) from None
        s.ids += ids
        s.keys.update(keys)
        s.seq += 1
        return codec.group_keys_resp(len(s.ids), len(s.keys), 700 * len(keys))

    def _value(self, gid: bytes, t: int) -> _Value:
        g = self.groups.get(gid)
        if g is None:
            raise self._refuse(wire.E_FAILED, "no such group")
        cur, _ = self.interval()
        if not max(cur - 16, g.first) <= t < cur:  # the firmware's dc_round.py: no value
            raise self._refuse(wire.E_FAILED, "no value")
        v = self.values.get((gid, t))
        if v is None:  # computed "at the close" of t, once
            x = self.reading(self.meter_id, t)
            noise = ref.noise_share(self.rng, g.n, g.m, g.lam)
            secret = self.rng.getrandbits(32) if g.m else 0
            b = ref.blinding(g.keys, self.meter_id, gid, t)
            v = _Value((x + noise + b + secret) & ref.MASK32, secret)
            self.values[(gid, t)] = v
        return v

    def _recover(self, p: bytes) -> bytes:
        gid, t, missing = codec.parse_recover_cmd(p)
        g = self.groups.get(gid)
        if g is None:
            raise self._refuse(wire.E_FAILED, "no such group")
        if g.m == 0:
            raise self._refuse(wire.E_POLICY, "recovery in a plain group")
        if self.meter_id in missing:
            raise self._refuse(wire.E_POLICY, "recovery naming this meter")
        if len(missing) > g.m:
            raise self._refuse(wire.E_POLICY, f"recovery naming {len(missing)} > M")
        if len(set(missing)) != len(missing) or not set(missing) <= set(g.ids):
            raise self._refuse(wire.E_POLICY, "recovery naming a non-member or one twice")
        v = self.values.get((gid, t))
        if v is None or not v.sent:
            raise self._refuse(wire.E_POLICY, "recovery for a value never sent")
        if v.answered:
            raise self._refuse(wire.E_POLICY, "recovery already answered")
        r = (v.secret + ref.blinding(g.keys, self.meter_id, gid, t, only=missing)) & ref.MASK32
        v.answered = True
        v.secret = 0
        return codec.value_resp(t, r)

    def profile(self) -> dict[int, int]:
        """Lab truth: {t_end: import_mwh} of the closed intervals it keeps."""
        cur, _ = self.interval()
        return {(t + 1) * self.length: self.reading(self.meter_id, t)
                for t in range(max(0, cur - PROFILE_CAP), cur)}


class SimLink:
    """A link to a :class:`SimMeter`, counting the bytes the real frames would take."""

    def __init__(self, meter: SimMeter, timeout: float = 5.0,
                 on_answer: Callable[[int, bytes], None] | None = None) -> None:
        self.meter = meter
        self.timeout = timeout
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.on_answer = on_answer  # called after the meter answered, before the head-end sees it
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def _exchange(self, kind: int, payload: bytes) -> bytes:
        self.tx_bytes += line_len(payload)
        if not self.meter.up:
            raise LinkError(f"sim: meter {self.meter.meter_id} did not answer within "
                            f"{self.timeout:g} s")
        try:
            ans = self.meter.handle(kind, payload)
        except MeterError as e:
            self.rx_bytes += line_len(bytes(1) + str(e.detail or "").encode(), up=True)
            raise
        self.rx_bytes += line_len(ans, up=True, encrypt=kind in wire.LOPA_ENC_RESPONSE_KINDS)
        if self.on_answer:
            self.on_answer(kind, ans)
        return ans

    def request_raw(self, kind: int, payload: bytes) -> bytes:
        return self._exchange(kind, payload)

    def request(self, kind: int, args: dict[str, Any] | None = None) -> Any:
        if kind != wire.K_READ:
            raise MeterError(wire.E_UNKNOWN_KIND, None, "sim: only READ")
        self.tx_bytes += line_len(b"")
        if not self.meter.up:
            raise LinkError(f"sim: meter {self.meter.meter_id} did not answer within "
                            f"{self.timeout:g} s")
        idx, start = self.meter.interval()
        self.rx_bytes += line_len(bytes(250), up=True, encrypt=True)  # ~250 bytes of JSON
        return {"interval": {"start": start, "length": self.meter.length, "index": idx},
                "clock": int(self.meter.clock.now() - self.meter.late_s)}


@dataclass
class SimFleet:
    clock: SimClock
    meters: dict[int, SimMeter]
    links: list[SimLink] = field(default_factory=list)

    @property
    def targets(self) -> list[Target]:
        return [Target(i, f"sim:{i}") for i in sorted(self.meters)]

    def connector(self, on_answer: Callable[[int, int, bytes], None] | None = None
                  ) -> Connector:
        def connect(tgt: Target) -> Link:
            m = self.meters.get(tgt.meter_id)
            if m is None:
                raise LinkError(f"{tgt.port}: cannot open (no such meter)")
            hook = None
            if on_answer is not None:
                cb = on_answer

                def hook(kind: int, ans: bytes, _i: int = tgt.meter_id) -> None:
                    cb(_i, kind, ans)
            link = SimLink(m, on_answer=hook)
            self.links.append(link)
            return link

        return connect

    def lab_probe(self) -> LabProbe:
        def probe(tgt: Target) -> dict[int, int]:
            return self.meters[tgt.meter_id].profile()

        return probe


def sim_fleet(n: int, length: int = 3, seed: int = 1,
              reading: Callable[[int, int], int] = default_reading) -> SimFleet:
    """``n`` simulated meters with distinct random 63-bit ids on one clock."""
    rng = random.Random(seed)
    clock = SimClock()
    ids: set[int] = set()
    while len(ids) < n:
        ids.add(rng.getrandbits(63) or 1)
    return SimFleet(clock, {i: SimMeter(i, clock, length, seed * 7919 + k, reading)
                            for k, i in enumerate(sorted(ids))})
