"""The LoPA head-end: what EIServer did in the paper, over many meters at once.

- :meth:`HeadEnd.keys` (S1): KEYGEN on every meter, store its public key;
- :meth:`HeadEnd.pubkeys` (S2): PUBKEY on every meter, store its public key;
- :meth:`HeadEnd.group_create` (S3): GROUP_BEGIN, GROUP_KEYS in chunks of at most 25 members,
  GROUP_COMMIT, on every member;
- :meth:`HeadEnd.run` (S4): per interval, CIPHERTEXT from every member, RECOVER from the
  reporters of a robust group, and the aggregate ``(sum c - sum r) mod 2^32``.

One thread per meter, each with its own link (``MeterLink`` for serial ports); every read has
a timeout, and a meter that is unplugged, slow or refusing is named in the result. Everything
learnt is committed to :class:`~host_tools.headend.lopa.state.State` step by step, so a second
run resumes where a killed one stopped. Bytes on the wire and round trips are counted per
command (:mod:`~host_tools.headend.lopa.figures`).
"""

from __future__ import annotations

import concurrent.futures as cf
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from host_tools.headend import wire
from host_tools.headend.client import LinkError, MeterError, MeterLink
from host_tools.headend.keystore import Keystore, KeystoreError
from host_tools.headend.lopa import codec
from host_tools.headend.lopa.codec import CHUNK_MAX, CodecError
from host_tools.headend.lopa.figures import Cmd, Op
from host_tools.headend.lopa.ref import BadPublicKey, aggregate, check_public_key, signed32
from host_tools.headend.lopa.state import GroupRow, MemberRow, RoundRow, State
from host_tools.transport.serial import BoardError

# The registrar's approval of a group: (gid, m, lambda, [(id, pk)] ascending) -> {id: tag}
Approve = Callable[[bytes, int, float, list[tuple[int, bytes]]], dict[int, bytes]]

T = TypeVar("T")

HISTORY = 16  # intervals of ciphertexts a meter keeps (docs/PROTOCOL.md)
# How far behind the head-end's reckoning a member may close an interval and still be waited
# for: a starved VM or a meter whose clock is a little slow; beyond it the clock is wrong.
LATE_CLOSE_MAX_S = 30
# How far two members' clocks may disagree: each is set in whole seconds (provisioning,
# TIME_SET), and the head-end reads one member's. A member's group is in force from the interval
# its own clock was in at its commit, so a group's first round is an interval that had opened
# on every member's clock by then.
CLOCK_SKEW_S = 2.0


class LopaError(Exception):
    """A head-end LoPA operation cannot go on; the message names the meters concerned."""


class Link(Protocol):
    """What the head-end needs of a link to one meter (``MeterLink`` has it)."""

    tx_bytes: int
    rx_bytes: int
    timeout: float

    def request(self, kind: int, args: dict[str, Any] | None = None) -> Any: ...

    def request_raw(self, kind: int, payload: bytes) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Target:
    """A meter and where to reach it."""

    meter_id: int
    port: str

    @property
    def name(self) -> str:
        return f"meter {self.meter_id} ({self.port or 'no port'})"


Connector = Callable[[Target], Link]
LabProbe = Callable[[Target], dict[int, int]]  # meter -> {t_end: import_mwh} (its load profile)

# what a meter's failure can look like; anything else is a bug and propagates
METER_FAILURES = (LinkError, MeterError, BoardError, KeystoreError, CodecError, BadPublicKey,
                  LopaError, OSError)


def serial_connector(keystore: Keystore) -> Connector:
    """Links over serial ports, with the WAN keys and counters of ``keystore``."""

    def connect(tgt: Target) -> Link:
        entry = keystore.get(tgt.meter_id)
        if entry is None:
            raise KeystoreError(f"meter {tgt.meter_id} is not in {keystore.path}")
        return MeterLink(tgt.port, entry, keystore)

    return connect


def targets_from_ports(ports: Iterable[str], keystore: Keystore) -> list[Target]:
    """The meter provisioned on each port (as the keystore last saw it)."""
    out: list[Target] = []
    for p in ports:
        e = keystore.find(p)
        out.append(Target(e.meter_id, p))
    ids = [t.meter_id for t in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise LopaError(f"meter(s) {', '.join(map(str, dup))} listed on several ports")
    return out


def gid_text(gid: bytes) -> str:
    """A gid for people: its text when printable, else hex."""
    try:
        s = gid.decode()
        if s.isprintable():
            return s
    except UnicodeDecodeError:
        pass
    return "0x" + gid.hex()


def parse_gid(text: str) -> bytes:
    """``--gid``: UTF-8 text, or ``0x`` + hex; 1..16 bytes."""
    gid = bytes.fromhex(text[2:]) if text.startswith("0x") else text.encode()
    try:
        return codec.check_gid(gid)
    except CodecError as e:
        raise LopaError(f"--gid {text!r}: {e}") from None


def _why(e: BaseException) -> str:
    return str(e).strip() or type(e).__name__


# -- results -----------------------------------------------------------------------------
@dataclass
class MeterOutcome:
    target: Target
    ok: bool
    error: str | None = None
    pk: bytes | None = None
    created: bool | None = None
    note: str | None = None
    meter_us: int | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"meter": str(self.target.meter_id), "port": self.target.port,
                             "ok": self.ok}
        if self.pk is not None:
            d["pk"] = self.pk.hex()
        if self.created is not None:
            d["created"] = self.created
        if self.meter_us is not None:
            d["meter_us"] = self.meter_us
        if self.note:
            d["note"] = self.note
        if self.error:
            d["error"] = self.error
        return d


@dataclass
class OpResult:
    """What S1, S2 or S3 did: one outcome per meter and the figures."""

    op: Op
    outcomes: list[MeterOutcome]
    note: str | None = None

    @property
    def failed(self) -> list[MeterOutcome]:
        return [o for o in self.outcomes if not o.ok]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"test": self.op.test, "meters": [o.to_json() for o in self.outcomes],
                             "failed": [str(o.target.meter_id) for o in self.failed],
                             "figures": self.op.summary()}
        if self.op.gid is not None:
            d["gid"] = gid_text(self.op.gid)
        if self.note:
            d["note"] = self.note
        return d


LAB_NOTE = ("lab truth: plaintext interval energies read by a lab probe (a virtual meter's "
            "flash, a board's REPL), never over the WAN; a real head-end cannot know them")


@dataclass
class RoundResult:
    gid: bytes
    t: int
    length: int
    robust: bool
    ciphertexts: dict[int, int]
    answers: dict[int, int]
    missing: list[int]
    why: dict[int, str]  # why each missing (or silent) member is missing
    aggregate: int | None
    error: str | None
    resumed: bool = False
    lab: dict[int, int] | None = None  # lab truth: each reporting member's plaintext
    expected: int | None = None  # lab truth: sum of the reporting members' plaintexts
    ports: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.aggregate is not None

    @property
    def lab_error(self) -> int | None:
        """aggregate - expected as a signed number (the noise, with --noise)."""
        if self.aggregate is None or self.expected is None:
            return None
        return signed32(self.aggregate - self.expected)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "gid": gid_text(self.gid), "interval": self.t, "interval_length_s": self.length,
            "ciphertexts": {str(i): c for i, c in sorted(self.ciphertexts.items())},
            "aggregate": self.aggregate, "missing": [str(i) for i in sorted(self.missing)],
            "status": "ok" if self.ok else "failed"}
        if self.robust:
            d["recovery"] = {str(i): r for i, r in sorted(self.answers.items())}
        if self.why:
            d["missing_why"] = {str(i): w for i, w in sorted(self.why.items())}
        if self.error:
            d["error"] = self.error
        if self.resumed:
            d["resumed"] = True
        if self.expected is not None or self.lab is not None:
            d["expected"] = self.expected
            d["lab_truth"] = True
            d["lab_note"] = LAB_NOTE
            d["lab_plaintexts"] = {str(i): x for i, x in sorted((self.lab or {}).items())}
            if self.lab_error is not None:
                d["error_vs_lab_truth"] = self.lab_error
        return d


@dataclass
class RunResult:
    gid: bytes
    run_id: int
    resumed: bool
    rounds: list[RoundResult]
    op: Op
    lab_errors: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"gid": gid_text(self.gid), "run": self.run_id, "resumed": self.resumed,
                "rounds": [r.to_json() for r in self.rounds], "figures": self.op.summary(),
                "lab_errors": {str(k): v for k, v in self.lab_errors.items()}}


@dataclass
class Hooks:
    """Test and demo hooks into a round (called from the head-end's main thread)."""

    before_wait: Callable[[int], None] | None = None  # t is known; the interval is still open
    after_ciphertexts: Callable[[int, dict[int, int]], None] | None = None
    after_missing: Callable[[int, list[int]], None] | None = None  # S committed, no RECOVER yet


# -- the head-end --------------------------------------------------------------------------
def _defer_ctrl_c() -> tuple[threading.Event, Callable[[], None]]:
    """While answers are on their way, Ctrl-C (SIGINT) only sets the event that _each checks
    after each answer it hands over, so the KeyboardInterrupt is raised there and nowhere else:
    not in the caller's code between two answers (the generator would be closed with answers
    in flight, never stored), and not inside a finaliser that happened to run in this thread
    (CPython prints an exception raised there and drops it: the Ctrl-C would be lost). Returns
    the event and the function that puts the previous handler back; off the main thread (no
    signals there) the event is never set."""
    import signal

    ev = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return ev, lambda: None
    old = signal.getsignal(signal.SIGINT)
    if old in (signal.SIG_IGN, None):
        return ev, lambda: None  # Ctrl-C is ignored here (or not Python's to handle)
    signal.signal(signal.SIGINT, lambda _sig, _frame: ev.set())

    def restore() -> None:
        signal.signal(signal.SIGINT, old)

    return ev, restore


class HeadEnd:
    def __init__(self, state: State, connect: Connector, *, timeout: float = 5.0,
                 key_s: float = 1.5, margin_s: float = 0.5, value_wait_s: float = 2.0,
                 workers: int = 64, chunk: int = CHUNK_MAX,
                 sleep: Callable[[float], None] = time.sleep,
                 now: Callable[[], float] = time.monotonic,
                 say: Callable[[str], None] | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        """``timeout``: every read; ``key_s``: extra seconds allowed per member of a
        GROUP_KEYS chunk (the meter derives one K_ij per member before it answers; a Pico
        takes far longer than the virtual board); ``margin_s``: how long after an interval
        boundary to ask for its ciphertexts; ``value_wait_s``: how long to keep asking a meter
        that answers "no value" yet (its interval closes a little late)."""
        self.state = state
        self.connect = connect
        self.timeout = timeout
        self.key_s = key_s
        self.margin_s = margin_s
        self.value_wait_s = value_wait_s
        self.workers = workers
        if not 1 <= chunk <= CHUNK_MAX:
            raise ValueError(f"chunk: 1..{CHUNK_MAX} members per GROUP_KEYS")
        self.chunk = chunk  # members per GROUP_KEYS chunk (the protocol allows up to 25)
        self.sleep = sleep
        self.now = now
        self.say = say or (lambda _m: None)
        self.progress = progress or (lambda _s, _d, _t: None)
        self._links: dict[int, Link] = {}
        self._lock = threading.Lock()
        self._clock_from = -1  # the member whose READ gave the last interval

    # -- plumbing -------------------------------------------------------------------------
    def close(self) -> None:
        """Close every link (so that the ports are free, e.g. for a lab probe)."""
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for link in links:
            try:
                link.close()
            except Exception:  # closing a dead port
                pass

    def __enter__(self) -> HeadEnd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _link(self, tgt: Target) -> Link:
        with self._lock:
            link = self._links.get(tgt.meter_id)
        if link is None:
            if not tgt.port:
                raise LopaError("no port given for it")
            link = self.connect(tgt)
            link.timeout = self.timeout
            with self._lock:
                self._links[tgt.meter_id] = link
        return link

    def _call(self, op: Op, tgt: Target, kind: int, payload: bytes,
              timeout: float | None = None) -> tuple[bytes, Cmd]:
        """One command to one meter, counted in ``op``."""
        cmd = op.add(Cmd(tgt.meter_id, wire.KIND_NAMES.get(kind, hex(kind))))
        link: Link | None = None
        t0 = time.perf_counter()
        try:
            link = self._link(tgt)
            tx0, rx0 = link.tx_bytes, link.rx_bytes
            link.timeout = timeout or self.timeout
            try:
                answer = link.request_raw(kind, payload)
            finally:
                link.timeout = self.timeout
                cmd.tx, cmd.rx = link.tx_bytes - tx0, link.rx_bytes - rx0
            cmd.ok = True
            return answer, cmd
        except BaseException as e:
            cmd.error = _why(e)
            raise
        finally:
            cmd.rtt_s = time.perf_counter() - t0

    def _read(self, op: Op, tgt: Target) -> dict[str, Any]:
        cmd = op.add(Cmd(tgt.meter_id, "READ"))
        t0 = time.perf_counter()
        try:
            link = self._link(tgt)
            tx0, rx0 = link.tx_bytes, link.rx_bytes
            try:
                r: dict[str, Any] = link.request(wire.K_READ)
            finally:
                cmd.tx, cmd.rx = link.tx_bytes - tx0, link.rx_bytes - rx0
            cmd.ok = True
            return r
        except BaseException as e:
            cmd.error = _why(e)
            raise
        finally:
            cmd.rtt_s = time.perf_counter() - t0

    def _each(self, targets: list[Target], fn: Callable[[Target], T]
              ) -> Iterable[tuple[Target, T | BaseException]]:
        """Run ``fn`` for every target concurrently (one thread each); yield (target, result
        or the meter's failure) as each finishes, in this thread."""
        if not targets:
            return
        got: dict[int, tuple[Target, T | BaseException]] = {}  # by index in targets
        handed: set[int] = set()
        lock = threading.Lock()

        def work(i: int, tgt: Target) -> int:
            res: T | BaseException
            try:
                res = fn(tgt)
            except METER_FAILURES as e:
                res = e
            with lock:
                got[i] = (tgt, res)
            return i

        ex = cf.ThreadPoolExecutor(max_workers=min(self.workers, len(targets)),
                                   thread_name_prefix="headend")
        ctrl_c, restore = _defer_ctrl_c()
        try:
            futs = [ex.submit(work, i, t) for i, t in enumerate(targets)]
            for f in cf.as_completed(futs):
                i = f.result()
                yield got[i]
                handed.add(i)
                if ctrl_c.is_set():
                    raise KeyboardInterrupt
            if ctrl_c.is_set():
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            # Ctrl-C: the requests under way still finish (each within its timeout; those
            # not started are dropped) and their answers are handed over to be stored before
            # the interrupt goes on. A meter answers RECOVER once per round: an answer
            # dropped here would leave the round undecryptable on the next run.
            ex.shutdown(wait=True, cancel_futures=True)
            with lock:
                left = [got[i] for i in sorted(got) if i not in handed]
            yield from left
            raise
        finally:
            restore()
            ex.shutdown(wait=True)

    def _save(self, op: Op) -> None:
        op.finish()
        self.state.save_op(op.test, op.name, op.gid, op.meters, op.started, op.wall_s,
                           op.summary(), [c.row() for c in op.cmds])

    # -- S1, S2 -----------------------------------------------------------------------------
    def keys(self, targets: list[Target], replace: bool = False) -> OpResult:
        """S1: make (or, with ``replace``, replace) each meter's X25519 key pair."""
        return self._keys("S1", targets, wire.K_KEYGEN, codec.keygen_cmd(replace))

    def pubkeys(self, targets: list[Target]) -> OpResult:
        """S2: read each meter's public key."""
        return self._keys("S2", targets, wire.K_PUBKEY, b"")

    def _keys(self, test: str, targets: list[Target], kind: int, payload: bytes) -> OpResult:
        op = Op(test, len(targets))
        done = 0
        self.progress(op.name, 0, len(targets))

        def one(tgt: Target) -> codec.KeyAnswer:
            raw, cmd = self._call(op, tgt, kind, payload)
            ans = codec.parse_keygen(raw) if kind == wire.K_KEYGEN else codec.parse_pubkey(raw)
            cmd.meter_us = ans.us
            try:
                check_public_key(ans.pk)
            except BadPublicKey as e:
                raise BadPublicKey(f"sent an unusable public key: {e}") from None
            return ans

        outcomes: list[MeterOutcome] = []
        for tgt, res in self._each(targets, one):
            if isinstance(res, BaseException):
                outcomes.append(MeterOutcome(tgt, False, error=_why(res)))
            else:
                known = self.state.meter(tgt.meter_id)
                note = None
                if known and known.pk and known.pk != res.pk:
                    note = "public key changed: set up its groups again"
                self.state.put_meter(tgt.meter_id, tgt.port, res.pk,
                                     res.created if kind == wire.K_KEYGEN else None, res.us)
                outcomes.append(MeterOutcome(tgt, True, pk=res.pk,
                                             created=res.created if kind == wire.K_KEYGEN
                                             else None, note=note, meter_us=res.us))
            done += 1
            self.progress(op.name, done, len(targets))
        self._save(op)
        # Two meters with one public key: a cloned board, or a meter lying about its key.
        pks: dict[bytes, list[int]] = {}
        for o in outcomes:
            if o.pk is not None:
                pks.setdefault(o.pk, []).append(o.target.meter_id)
        for ids in pks.values():
            if len(ids) > 1:
                for o in outcomes:
                    if o.target.meter_id in ids:
                        o.note = f"same public key as meter(s) {ids}: not usable in a group"
        outcomes.sort(key=lambda o: o.target.meter_id)
        return OpResult(op, outcomes)

    # -- S3 ------------------------------------------------------------------------------------
    def group_create(self, gid: bytes, targets: list[Target], m: int = 0, lam: float = 0.0,
                     force: bool = False, approve: Approve | None = None) -> OpResult:
        """S3: distribute the members' public keys to every member and commit the group.

        Resumes a set-up that was interrupted (members already committed are left alone); a
        group already set up with the same members and parameters is not redone unless
        ``force``. ``approve`` asks the neutral registrar for the group (gid, m, lambda,
        members) and gives each member's tag, which its GROUP_COMMIT carries: a meter with the
        registrar's anchor commits no group without it (host_tools/registrar.py)."""
        codec.check_gid(gid)
        n = len(targets)
        ids = [t.meter_id for t in targets]
        if len(set(ids)) != n:
            raise LopaError("a meter is listed twice")
        if not codec.N_MIN <= n <= codec.N_MAX:
            raise LopaError(f"a group has {codec.N_MIN}..{codec.N_MAX} members, not {n}")
        if m and not 1 <= m <= n - 2:
            raise LopaError(f"--robust M must be 1..{n - 2} for {n} members (0: a plain group)")
        if not lam >= 0:
            raise LopaError("--noise LAMBDA must be >= 0")
        members: list[tuple[int, bytes]] = []
        lacking = []
        for t in sorted(targets, key=lambda t: t.meter_id):
            row = self.state.meter(t.meter_id)
            if row is None or row.pk is None:
                lacking.append(t.name)
            else:
                members.append((t.meter_id, row.pk))
        if lacking:
            raise LopaError(f"no public key for {', '.join(lacking)}: run `meterctl headend "
                            "pubkeys` (or `keys`) on them first")
        pks = [pk for _, pk in members]
        if len(set(pks)) != len(pks):
            raise LopaError("two members have the same public key; run `meterctl headend "
                            "pubkeys` and check the meters")
        for mid, pk in members:
            try:
                check_public_key(pk)
            except BadPublicKey as e:
                raise LopaError(f"meter {mid}: {e}") from None
        lam32 = float(struct.unpack(">f", struct.pack(">f", lam))[0])  # as the meter holds it
        tags = approve(gid, m, lam32, members) if approve is not None else {}
        old = self.state.group(gid)
        same = (old is not None and old.n == n and old.m == m and old.lam == lam32
                and [(r.meter_id, r.pk) for r in self.state.members(gid)] == members)
        by_id = {t.meter_id: t for t in targets}
        if old is not None and same and old.state == "ready" and not force:
            outs = [MeterOutcome(by_id[r.meter_id], True, note="already set up")
                    for r in self.state.members(gid)]
            return OpResult(Op("S3", n, gid), outs,
                            note=f"group {gid_text(gid)} is already set up on all {n} members "
                                 "(not redone; --force sets it up again)")
        if old is not None and not same and not force:
            given = {r.meter_id: r.pk for r in self.state.members(gid)}
            changed = [str(i) for i, pk in members if i in given and given[i] != pk]
            if changed and set(given) == {i for i, _ in members}:
                raise LopaError(f"group {gid_text(gid)}: the public key of meter(s) "
                                f"{', '.join(changed)} changed since it was set up; pass "
                                "--force to set it up again")
            raise LopaError(f"group {gid_text(gid)} exists with other members or parameters "
                            f"({old.n} members, M={old.m}, lambda={old.lam:g}); pass --force "
                            "to set it up again")
        if old is None or force or not same:
            self.state.begin_group(gid, m, lam32, members)
        todo = [by_id[r.meter_id] for r in self.state.members(gid) if r.state != "committed"]
        if len(todo) < n:
            self.say(f"group {gid_text(gid)}: resuming set-up; {n - len(todo)} of {n} members "
                     "already committed")
        chunks = codec.key_chunks(gid, members, self.chunk)
        op = Op("S3", n, gid)
        total = len(todo) * (len(chunks) + 2)
        steps = 0
        plock = threading.Lock()

        def step() -> None:
            nonlocal steps
            with plock:
                steps += 1
                self.progress(f"group {gid_text(gid)}: keys", steps, total)

        self.progress(f"group {gid_text(gid)}: keys", 0, total)

        def one(tgt: Target) -> codec.CommitAnswer:
            mid = tgt.meter_id
            raw, cmd = self._call(op, tgt, wire.K_GROUP_BEGIN,
                                  codec.group_begin_cmd(gid, n, m, lam32))
            cmd.meter_us = codec.parse_us(raw)
            self.state.member_progress(gid, mid, "begun", chunks=0)
            step()
            got = 0
            for seq, chunk in enumerate(chunks):
                raw, cmd = self._call(op, tgt, wire.K_GROUP_KEYS,
                                      codec.group_keys_cmd(gid, seq, chunk),
                                      timeout=self.timeout + self.key_s * len(chunk))
                ans = codec.parse_group_keys(raw)
                cmd.meter_us = ans.us
                got += len(chunk)
                if ans.received != got:
                    raise LopaError(f"GROUP_KEYS chunk {seq}: the meter counts {ans.received} "
                                    f"members received, the head-end sent {got}")
                self.state.member_progress(gid, mid, "keys", chunks=seq + 1)
                step()
            raw, _ = self._call(op, tgt, wire.K_GROUP_COMMIT,
                                codec.group_commit_cmd(gid, tags.get(mid, b"")))
            ans_c = codec.parse_group_commit(raw)  # its us (C3) restates the chunks' sum
            if ans_c.n != n:
                raise LopaError(f"GROUP_COMMIT: the meter committed {ans_c.n} members, not {n}")
            self.state.member_progress(gid, mid, "committed", c3_us=ans_c.us,
                                       persisted=ans_c.persisted)
            step()
            return ans_c

        outcomes = [MeterOutcome(by_id[r.meter_id], True, note="already committed")
                    for r in self.state.members(gid) if r.state == "committed"]
        for tgt, res in self._each(todo, one):
            if isinstance(res, BaseException):
                self.state.member_progress(gid, tgt.meter_id, "failed", error=_why(res))
                outcomes.append(MeterOutcome(tgt, False, error=_why(res)))
            else:
                outcomes.append(MeterOutcome(
                    tgt, True, meter_us=res.us,
                    note=f"C3 {res.us} us for {n - 1} pair keys, {res.persisted} B persisted"))
        self._save(op)
        if all(r.state == "committed" for r in self.state.members(gid)):
            self.state.set_group_state(gid, "ready")
        outcomes.sort(key=lambda o: o.target.meter_id)
        return OpResult(op, outcomes)

    # -- S4 ------------------------------------------------------------------------------------
    def run(self, gid: bytes, rounds: int, targets: list[Target] | None = None,
            lab: LabProbe | None = None, hooks: Hooks | None = None) -> RunResult:
        """S4: ``rounds`` aggregation rounds, one per load-profile interval.

        Resumes the group's unfinished run (its rounds done are not redone; a round left
        half-way is finished with the missing set it had committed). ``targets`` says where
        each member is (default: the ports in the database); a member without one counts as
        not reporting. With ``lab``, afterwards each reporting member's load profile is read
        through ``lab`` (lab truth) and every round gets its ``expected`` sum."""
        hooks = hooks or Hooks()
        g = self.state.group(gid)
        if g is None:
            raise LopaError(f"no group {gid_text(gid)} in {self.state.path}; create it with "
                            "`meterctl headend group create`")
        members = self.state.members(gid)
        if g.state != "ready":
            pending = [str(r.meter_id) for r in members if r.state != "committed"]
            raise LopaError(f"group {gid_text(gid)}: set-up not complete on meter(s) "
                            f"{', '.join(pending)}; run `meterctl headend group create` again")
        where = {t.meter_id: t for t in targets} if targets is not None else {}
        tg = self._member_targets(members, targets)
        strangers = sorted(set(where) - set(tg))
        if strangers:
            self.say(f"meter(s) {', '.join(map(str, strangers))} are not members of group "
                     f"{gid_text(gid)}: left alone")
        run, resumed = self.state.open_run(gid, rounds)
        op = Op("S4", len(members), gid)
        results: list[RoundResult] = []
        before = self.state.rounds_of_run(run.run_id)
        if resumed:
            self.say(f"group {gid_text(gid)}: resuming run #{run.run_id} "
                     f"({sum(r.state in ('done', 'failed') for r in before)} of {rounds} rounds "
                     "done)")
        self.progress(f"group {gid_text(gid)}: rounds", len(before), rounds)
        try:
            cur: int | None = None
            # The meter's clock is read once per run (a READ on one member); every later
            # interval is reckoned from it and this host's clock, which over a run's few
            # intervals agree to well under the margin (PROTOCOL.md: the meter keeps
            # HISTORY intervals, and a CIPHERTEXT asked a moment early is asked again).
            clock: tuple[int, float, int] | None = None  # (meter clock, host now, length)
            for rd in before:
                if rd.state in ("done", "failed"):
                    results.append(self._result(g, rd, tg, resumed=True))
                    continue
                if cur is None:
                    cur = self._interval(op, list(tg.values()))[0]
                if cur - rd.t >= HISTORY:
                    err = (f"round {rd.t}: expired (the meters keep {HISTORY} intervals of "
                           "ciphertexts; the head-end was away too long)")
                    self.state.finish_round(gid, rd.t, False, None, err, rd.missing or [], rd.why)
                    results.append(self._result(g, self._row(gid, rd.t), tg, resumed=True))
                else:
                    self.say(f"round {rd.t}: finishing it (interrupted)")
                    if rd.t >= cur:
                        # interrupted before its interval closed: the meters have no value
                        # for it yet, so wait for the close as a fresh round does
                        t_open, length, wait = self._interval(op, list(tg.values()))
                        self._wait(op, wait + (rd.t - t_open) * length)
                    results.append(self._round(op, g, members, tg, rd.t, rd.length, hooks,
                                               resumed=True))
            while len(results) < rounds:
                if clock is None:
                    t, length, wait, clock = self._interval_read(op, list(tg.values()))
                    t, wait = self._in_force(g, t, wait, clock)
                else:
                    t, length, wait = self._interval_from(clock)
                if self.state.round(gid, t) is not None:
                    self._wait(op, wait)  # done by another run: take the next interval
                    continue
                self.state.start_round(gid, t, run.run_id, length)
                if hooks.before_wait:
                    hooks.before_wait(t)
                self._wait(op, wait)
                results.append(self._round(op, g, members, tg, t, length, hooks))
                self.progress(f"group {gid_text(gid)}: rounds", len(results), rounds)
            self.state.finish_run(run.run_id)
        finally:
            self._save(op)
            self.close()  # the lab probe needs the ports
        res = RunResult(gid, run.run_id, resumed, results, op)
        if lab is not None:
            self.lab_truth(res, lab, tg)
        return res

    def run_many(self, gids: list[bytes], rounds: int, targets: list[Target] | None = None,
                 lab: LabProbe | None = None, hooks: Hooks | None = None
                 ) -> tuple[list[RunResult], dict[bytes, str]]:
        """S4 for several groups in one pass (issue 18, Build 10): ``rounds`` load-profile
        intervals, each read once from the clock and waited for once, then every group's round
        for that interval (a meter in four groups answers four CIPHERTEXTs in the pass: the
        protocol has no multi-group request). A group that cannot run (unknown, not set up) or
        whose round raises (a meter refuses: the registrar's budget, a released t) is reported
        in the second result, {gid: why}, and the others go on. Rounds left half-way by an
        interrupted run are finished first, as run() does."""
        hooks = hooks or Hooks()
        if len(set(gids)) != len(gids):
            raise LopaError("a group is listed twice")
        failed: dict[bytes, str] = {}
        live: list[tuple[GroupRow, list[MemberRow], dict[int, Target], Any, Op]] = []
        for gid in gids:
            g = self.state.group(gid)
            if g is None:
                failed[gid] = f"no group {gid_text(gid)} in {self.state.path}"
                continue
            members = self.state.members(gid)
            if g.state != "ready":
                failed[gid] = f"group {gid_text(gid)}: set-up not complete"
                continue
            run, _resumed = self.state.open_run(gid, rounds)
            live.append((g, members, self._member_targets(members, targets), run,
                         Op("S4", len(members), gid)))
        results: dict[bytes, list[RoundResult]] = {g.gid: [] for g, *_ in live}

        def attempt(g: GroupRow, members: list[MemberRow], tg: dict[int, Target], op: Op,
                    t: int, length: int, resumed: bool = False) -> None:
            try:
                results[g.gid].append(self._round(op, g, members, tg, t, length, hooks,
                                                  resumed=resumed))
            except (LopaError, *METER_FAILURES) as e:
                failed[g.gid] = f"group {gid_text(g.gid)}: {_why(e)}"

        try:
            for g, members, tg, run, op in live:  # rounds an interrupted run left
                for rd in self.state.rounds_of_run(run.run_id):
                    if rd.state in ("done", "failed"):
                        results[g.gid].append(self._result(g, rd, tg, resumed=True))
                    elif g.gid not in failed:
                        attempt(g, members, tg, op, rd.t, rd.length, resumed=True)
            everyone = {t.meter_id: t for _, _, tg, _, _ in live for t in tg.values()}
            clock: tuple[int, float, int] | None = None
            while True:
                todo = [x for x in live if x[0].gid not in failed
                        and len(results[x[0].gid]) < rounds]
                if not todo:
                    break
                if clock is None:
                    t, length, wait, clock = self._interval_read(todo[0][4],
                                                                 list(everyone.values()))
                    for g, *_ in todo:
                        t, wait = self._in_force(g, t, wait, clock)
                else:
                    t, length, wait = self._interval_from(clock)
                now = [x for x in todo if self.state.round(x[0].gid, t) is None]
                for g, _, _, run, _ in now:
                    self.state.start_round(g.gid, t, run.run_id, length)
                self._wait(todo[0][4], wait)
                for g, members, tg, _, op in now:
                    attempt(g, members, tg, op, t, length)
            for g, _, _, run, _ in live:
                if g.gid not in failed:
                    self.state.finish_run(run.run_id)
        finally:
            for *_, op in live:
                self._save(op)
            self.close()
        out = [RunResult(g.gid, run.run_id, False, results[g.gid], op)
               for g, _, _, run, op in live]
        if lab is not None:
            for res, (_, _, tg, _, _) in zip(out, live, strict=True):
                self.lab_truth(res, lab, tg)
        return out, failed

    def _member_targets(self, members: list[MemberRow], targets: list[Target] | None
                        ) -> dict[int, Target]:
        """Where each member is: in ``targets`` (a member not there has no port and counts
        as not reporting), or by default at the port in the database."""
        where = {t.meter_id: t for t in targets} if targets is not None else {}
        tg: dict[int, Target] = {}
        for r in members:
            if targets is not None:
                tg[r.meter_id] = where.get(r.meter_id, Target(r.meter_id, ""))
            else:
                row = self.state.meter(r.meter_id)
                tg[r.meter_id] = Target(r.meter_id, row.port if row else "")
        return tg

    def round_at(self, gid: bytes, t: int, length: int, run_id: int,
                 targets: list[Target] | None = None, hooks: Hooks | None = None
                 ) -> RoundResult:
        """One S4 round for interval ``t`` (of ``length`` s), which the caller knows has
        closed less than HISTORY intervals ago (the meters keep that many ciphertexts): for a
        caller that sets its own pace, e.g. reading in batches (host_tools/reliability/
        soak.py), where run() follows the clock one interval at a time. Recorded under
        ``run_id`` (State.open_run) like run()'s rounds; a round already finished is returned
        as it is, one left half-way is finished with the missing set it had committed."""
        g = self.state.group(gid)
        if g is None or g.state != "ready":
            raise LopaError(f"group {gid_text(gid)} is not set up in {self.state.path}")
        members = self.state.members(gid)
        tg = self._member_targets(members, targets)
        rd = self.state.round(gid, t)
        if rd is not None and rd.state in ("done", "failed"):
            return self._result(g, rd, tg, resumed=True)
        if rd is None:
            self.state.start_round(gid, t, run_id, length)
        op = Op("S4", len(members), gid)
        try:
            return self._round(op, g, members, tg, t, length, hooks or Hooks(),
                               resumed=rd is not None)
        finally:
            self._save(op)

    def _wait(self, op: Op, seconds: float) -> None:
        t0 = time.perf_counter()
        self.sleep(seconds)
        op.wait_s += time.perf_counter() - t0

    def _interval(self, op: Op, targets: list[Target]) -> tuple[int, int, float]:
        """(t, length, seconds to wait): the open interval of the first member that answers,
        and how long until it has closed (plus the margin)."""
        return self._interval_read(op, targets)[:3]

    def _interval_from(self, clock: tuple[int, float, int]) -> tuple[int, int, float]:
        """(t, length, seconds to wait) for the interval open now, reckoned from a READ made
        earlier (``clock``: the meter's clock then, this host's ``now()`` then, the
        interval's length) instead of a READ per round. The meter's clock is whole seconds,
        so the reckoned time is behind by less than a second: a wait is never too short."""
        meter_then, host_then, length = clock
        meter_now = meter_then + max(0.0, self.now() - host_then)
        t = int(meter_now // length)
        return t, length, max(0.0, (t + 1) * length - meter_now) + self.margin_s

    def _in_force(self, g: GroupRow, t: int, wait: float, clock: tuple[int, float, int]
                  ) -> tuple[int, float]:
        """(t, seconds to wait), moved on to the first interval in force on every member when
        ``t`` may be before it: one whose members' clocks may have been in the next interval
        when they committed (set up just before a boundary: ``CLOCK_SKEW_S``). A member asked
        for an interval before its group answers "no value", and does for good."""
        if g.ready is None:
            return t, wait
        meter_then, host_then, length = clock
        meter_now = meter_then + max(0.0, self.now() - host_then)
        at_ready = meter_now - max(0.0, time.time() - g.ready)  # the read member's clock then
        first = int((at_ready + CLOCK_SKEW_S) // length)
        if t >= first:
            return t, wait
        return first, wait + (first - t) * length

    def _interval_read(self, op: Op, targets: list[Target]
                       ) -> tuple[int, int, float, tuple[int, float, int]]:
        """``_interval`` and the clock it read (for ``_interval_from``)."""
        errors = []
        # the member that told the time last goes first: a dead one costs a timeout each round
        for tgt in sorted(targets, key=lambda t: (t.meter_id != self._clock_from, t.meter_id)):
            if not tgt.port:
                continue
            try:
                r = self._read(op, tgt)
                iv = r["interval"]
                start, length, clock = int(iv["start"]), int(iv["length"]), int(r["clock"])
                t = start // length
                self._clock_from = tgt.meter_id
                return (t, length, max(0.0, start + length - clock) + self.margin_s,
                        (clock, self.now(), length))
            except METER_FAILURES as e:
                errors.append(f"{tgt.name}: {_why(e)}")
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
                errors.append(f"{tgt.name}: bad READ answer ({_why(e)})")
        raise LopaError("no member tells the time: " + "; ".join(errors or ["no ports"]))

    def _until_closed(self, op: Op, tgt: Target, t: int) -> float | None:
        """Seconds until interval ``t`` closes on this meter's own clock (plus the margin),
        when it has not yet and will within LATE_CLOSE_MAX_S; else None."""
        try:
            r = self._read(op, tgt)
            length, clock = int(r["interval"]["length"]), int(r["clock"])
        except (*METER_FAILURES, KeyError, TypeError, ValueError):
            return None
        left = (t + 1) * length - clock
        if 0 <= left <= LATE_CLOSE_MAX_S:
            return left + self.margin_s
        return None

    def _clock_note(self, op: Op, tgt: Target, t: int) -> str:
        """Where the clock of a meter without a value for interval ``t`` is: a meter behind
        (its clock set wrong, or it was off) from one that lost the value."""
        try:
            r = self._read(op, tgt)
            length = int(r["interval"]["length"])
            return (f"its clock {int(r['clock'])} is in interval "
                    f"{int(r['interval']['start']) // length}, asked for {t}")
        except (*METER_FAILURES, KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            return f"and no READ of its clock: {_why(e)}"

    def _row(self, gid: bytes, t: int) -> RoundRow:
        rd = self.state.round(gid, t)
        assert rd is not None
        return rd

    def _result(self, g: GroupRow, rd: RoundRow, tg: dict[int, Target],
                resumed: bool = False) -> RoundResult:
        return RoundResult(
            g.gid, rd.t, rd.length, g.m > 0, self.state.ciphertexts(g.gid, rd.t),
            self.state.answers(g.gid, rd.t), rd.missing or [], rd.why, rd.aggregate, rd.error,
            resumed, lab=self.state.lab(g.gid, rd.t) or None, expected=rd.expected,
            ports={i: t.port for i, t in tg.items()})

    def _round(self, op: Op, g: GroupRow, members: list[MemberRow], tg: dict[int, Target],
               t: int, length: int, hooks: Hooks, resumed: bool = False) -> RoundResult:
        gid = g.gid
        ids = [r.meter_id for r in members]
        rd = self._row(gid, t)
        why: dict[int, str] = dict(rd.why)
        have = self.state.ciphertexts(gid, t)

        def fail(msg: str, missing: list[int]) -> RoundResult:
            self.state.finish_round(gid, t, False, None, msg, missing, why)
            return self._result(g, self._row(gid, t), tg, resumed)

        if rd.missing is None:  # round 1 (again, for a resumed round: the meters keep c_i)
            need = [tg[i] for i in ids if i not in have and tg[i].port]
            for i in ids:
                if i not in have and not tg[i].port:
                    why[i] = "no port given for it"

            def ask(tgt: Target) -> int:
                deadline = self.now() + self.value_wait_s
                waited_for_close = False
                while True:
                    try:
                        raw, _ = self._call(op, tgt, wire.K_CIPHERTEXT,
                                            codec.ciphertext_cmd(gid, t))
                    except MeterError as e:
                        # "no value": the interval closes a moment late on this meter
                        if e.code == wire.E_FAILED and self.now() < deadline:
                            self.sleep(0.25)
                            continue
                        if e.code == wire.E_FAILED and not waited_for_close:
                            # Still none: a meter whose clock is behind (a VM starved on a
                            # loaded host, issue 20's "cannot decrypt" under `make bench`)
                            # has not closed t yet. Its own clock says how long until it
                            # does: wait that once, within LATE_CLOSE_MAX_S.
                            waited_for_close = True
                            until = self._until_closed(op, tgt, t)
                            if until is not None:
                                self.sleep(until)
                                deadline = self.now() + self.value_wait_s
                                continue
                        if e.code == wire.E_FAILED:
                            raise LopaError(f"{e} ({self._clock_note(op, tgt, t)})") from None
                        raise
                    t2, c = codec.parse_value(raw, "CIPHERTEXT answer")
                    if t2 != t & codec.MASK32:
                        raise LopaError(f"answered CIPHERTEXT for interval {t2}, not {t}")
                    return c

            for tgt, res in self._each(need, ask):
                if isinstance(res, BaseException):
                    why[tgt.meter_id] = _why(res)
                else:
                    self.state.put_ciphertext(gid, t, tgt.meter_id, res)
                    have[tgt.meter_id] = res
                    why.pop(tgt.meter_id, None)
            if hooks.after_ciphertexts:
                hooks.after_ciphertexts(t, dict(have))
            missing = sorted(i for i in ids if i not in have)
            if g.m == 0:
                if missing:
                    return fail(f"round {t}: plain group {gid_text(gid)} cannot decrypt: "
                                + "; ".join(f"{tg[i].name} did not report ({why.get(i, '?')})"
                                            for i in missing), missing)
                agg = aggregate(have.values())
                self.state.finish_round(gid, t, True, agg, None, [], why)
                return self._result(g, self._row(gid, t), tg, resumed)
            if len(missing) > g.m:
                return fail(f"round {t}: {len(missing)} members did not report, more than the "
                            f"{g.m} group {gid_text(gid)} tolerates: "
                            + "; ".join(f"{tg[i].name} ({why.get(i, '?')})" for i in missing),
                            missing)
            self.state.fix_missing(gid, t, missing, {i: why[i] for i in missing if i in why})
            if hooks.after_missing:
                hooks.after_missing(t, missing)
            s_set = missing
        else:
            s_set = list(rd.missing)  # committed before: the same S, never another one
        # round 2: every reporting member answers r_i for the committed S
        answers = self.state.answers(gid, t)
        reporters = [i for i in ids if i not in s_set]
        lacking_c = [i for i in reporters if i not in have]
        if lacking_c:  # cannot happen unless the database was edited
            return fail(f"round {t}: no ciphertext stored for "
                        + ", ".join(tg[i].name for i in lacking_c), s_set)
        need = [tg[i] for i in reporters if i not in answers]

        def recover(tgt: Target) -> int:
            raw, _ = self._call(op, tgt, wire.K_RECOVER, codec.recover_cmd(gid, t, s_set))
            t2, r = codec.parse_value(raw, "RECOVER answer")
            if t2 != t & codec.MASK32:
                raise LopaError(f"answered RECOVER for interval {t2}, not {t}")
            return r

        silent: dict[int, str] = {}
        for tgt, res in self._each(need, recover):
            if isinstance(res, BaseException):
                silent[tgt.meter_id] = _why(res)
            else:
                self.state.put_answer(gid, t, tgt.meter_id, res)
                answers[tgt.meter_id] = res
        if silent:
            why.update(silent)
            return fail(f"round {t}: undecryptable: "
                        + "; ".join(f"{tg[i].name} reported but did not answer the recovery "
                                    f"({w})" for i, w in sorted(silent.items()))
                        + " (the head-end never asks again with another missing set)", s_set)
        agg = aggregate((have[i] for i in reporters), answers.values())
        self.state.finish_round(gid, t, True, agg, None, s_set, why)
        return self._result(g, self._row(gid, t), tg, resumed)

    # -- lab truth -------------------------------------------------------------------------
    def lab_truth(self, res: RunResult, probe: LabProbe, tg: dict[int, Target]) -> None:
        """Lab mode: read each reporting member's plaintexts with ``probe`` (one probe per
        meter, after the rounds) and fill in every round's ``expected`` (lab truth)."""
        needed = sorted({i for r in res.rounds for i in r.ciphertexts
                         if i not in r.missing})
        profiles: dict[int, dict[int, int]] = {}
        for tgt, got in self._each([tg[i] for i in needed if tg[i].port], probe):
            if isinstance(got, BaseException):
                res.lab_errors[tgt.meter_id] = _why(got)
            else:
                profiles[tgt.meter_id] = got
        for r in res.rounds:
            t_end = (r.t + 1) * r.length
            values: dict[int, int] = {}
            complete = True
            for i in sorted(set(r.ciphertexts) - set(r.missing)):
                x = profiles.get(i, {}).get(t_end)
                if x is None:
                    complete = False
                    if i not in res.lab_errors:
                        res.lab_errors[i] = f"no load-profile record ending at {t_end}"
                else:
                    values[i] = x
            r.lab = values
            r.expected = aggregate(values.values()) if complete else None
            self.state.put_lab(r.gid, r.t, values, r.expected)
