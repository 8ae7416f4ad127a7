# The fuzzer's VM side: runs ON the MicroPython VM (never deployed to a board), driven by
# host_tools/fuzz (which builds the seed corpus with the host codecs and starts this file as
#   micropython -X heapsize=192K tests_host/fuzz_vm.py CONFIG.json
# with firmware/lib and firmware/ on MICROPYPATH). A mutator seeded from the host (xorshift32:
# the same seed gives the same inputs) makes every input here, in the VM, so no process is
# started per input. Targets, each against the real firmware objects:
#   wan      the WAN line and frame parser and request decoding: each input a line through
#            the comm task (its line cutting and in-place unescape) into CsSecurity, as the
#            kernel routes "frame_in" / "frame_err": payload and header fields mutated, then
#            sealed and MACed with the test key (structure-aware: the mutations reach past
#            the MAC check), and some lines' own structure (escapes, "~", line ends);
#   verify   the CS security module's verification (MAC, meter id, counter): valid frames
#            from the host mutated as raw bytes with no re-MAC, and exact replays (frames, as
#            comm hands them on);
#   chunk    the LoPA key-distribution handler (DcSecurity GROUP_BEGIN / GROUP_KEYS /
#            GROUP_COMMIT) from a pending set-up;
#   recover  the recovery-request handler (DcSecurity RECOVER) on a committed robust group.
# Pass: no exception escapes a handler (the documented rejection path is a logged refusal),
# no input takes longer than hang_ms (or, for the DC module, more than MAX_STEPS steps), and a
# rejected input changes nothing: a digest of the state the target owns (counters, keys,
# pending requests, set-up, groups, round history, files) is taken before and after it.
# Prints one JSON line of figures. MicroPython code: % formatting, as in firmware/.
# ruff: noqa: UP031
import gc
import hashlib
import json
import os
import struct
import sys
import time

import hmac_sha256
import store
import wan
from kernel import frozen

INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
MAX_STEPS = 20000  # DC module steps for one answer (a group of 4 needs at most a few)
CRASHES_KEPT = 10


class Rng:
    # xorshift32: small, deterministic, the same on CPython and MicroPython
    def __init__(self, seed):
        self.s = (seed & 0xFFFFFFFF) or 0x9E3779B9

    def u32(self):
        x = self.s
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.s = x
        return x

    def below(self, n):
        return self.u32() % n if n > 0 else 0

    def chance(self, pct):
        return self.below(100) < pct

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def data(self, n):
        return bytes(self.u32() & 0xFF for _ in range(n))


def mutate(data, rng, others, tokens, rounds=0):
    """1..4 random edits of data -> bytes (bit flips, bytes, interesting u8/u16/u32, inserts,
    deletes, duplicates, truncation, splices with another seed, dictionary tokens)."""
    b = bytes(data)
    for _ in range(rounds or 1 + rng.below(4)):
        n = len(b)
        op = rng.below(12)
        if op <= 2 and n:
            i = rng.below(n)
            v = b[i] ^ (1 << rng.below(8)) if op == 0 else rng.below(256) if op == 1 \
                else rng.pick(INTERESTING) & 0xFF
            b = b[:i] + bytes((v,)) + b[i + 1:]
        elif op == 3:
            i = rng.below(n + 1)
            b = b[:i] + rng.data(1 + rng.below(8)) + b[i:]
        elif op == 4 and n:
            i = rng.below(n)
            b = b[:i] + b[i + 1 + rng.below(min(16, n - i)):]
        elif op == 5 and n:
            i = rng.below(n)
            j = rng.below(n + 1)
            b = b[:j] + b[i:i + 1 + rng.below(min(40, n - i))] + b[j:]
        elif op == 6 and n:
            b = b[:rng.below(n)]
        elif op in (7, 8) and n >= (2 if op == 7 else 4):
            w = 2 if op == 7 else 4
            i = rng.below(n - w + 1)
            v = int.from_bytes(b[i:i + w], "big")
            c = rng.below(4)
            v = rng.pick(INTERESTING) if c == 0 else v + 1 if c == 1 else v - 1 if c == 2 \
                else rng.u32()
            b = b[:i] + (v & ((1 << (8 * w)) - 1)).to_bytes(w, "big") + b[i + w:]
        elif op == 9 and others:
            o = rng.pick(others)
            if o:
                i = rng.below(len(o))
                b = b[:rng.below(n + 1)] + o[i:i + 1 + rng.below(len(o) - i)]
        elif op == 10 and tokens:
            t = rng.pick(tokens)
            i = rng.below(n + 1)
            b = b[:i] + t + b[i + (0 if rng.chance(50) else len(t)):]
        elif op == 11 and tokens and rng.chance(20):
            b = rng.pick(tokens)
    return b


def reason(text):
    # a refusal's log line without its numbers and ids: the key rejects are counted under
    out = []
    for w in text.replace("(", " ").replace(")", " ").replace(":", " ").split():
        if any(c in "0123456789" for c in w) or len(w) > 20:
            continue
        out.append(w)
    return " ".join(out[:7])


class Port:
    def __init__(self):
        self.sent = []
        self.last_log = None
        self.logs = 0

    def send(self, to, kind, payload=None):
        if not frozen(payload):
            raise TypeError("mutable payload %s -> %s" % (kind, to))
        self.sent.append((to, kind, payload))
        return True

    def log(self, text):
        self.last_log = text
        self.logs += 1

    log_flood = log  # the kernel's rate limit is not what this fuzzes


def files_digest(d):
    h = hashlib.sha256()
    for name in sorted(os.listdir(d)):
        with open(d + "/" + name, "rb") as f:
            h.update(name.encode())
            h.update(f.read())
    return h.digest()


class Stats:
    def __init__(self, target):
        self.target = target
        self.n = 0
        self.accepted = 0
        self.rejected = 0
        self.reasons = {}
        self.crashes = 0
        self.crash_list = []
        self.hangs = 0
        self.hang_list = []
        self.changes = 0
        self.change_list = []
        self.unlogged = 0
        self.max_ms = 0
        self.replayed = []
        self.t0 = time.ticks_ms()

    def reject(self, why):
        self.rejected += 1
        r = reason(why)
        self.reasons[r] = self.reasons.get(r, 0) + 1

    def _keep(self, lst, item):
        if len(lst) < CRASHES_KEPT:
            lst.append(item)

    def crash(self, i, data, e):
        self.crashes += 1
        self._keep(self.crash_list, {"i": i, "input": data.hex() if data else "",
                                     "error": "%s: %s" % (type(e).__name__, e)})

    def hang(self, i, data, ms):
        self.hangs += 1
        self._keep(self.hang_list, {"i": i, "input": data.hex(), "ms": ms})

    def change(self, i, data, what):
        self.changes += 1
        self._keep(self.change_list, {"i": i, "input": data.hex(), "what": what})

    def timed(self, i, data, t0, hang_ms):
        ms = time.ticks_diff(time.ticks_ms(), t0)
        if ms > self.max_ms:
            self.max_ms = ms
        if ms > hang_ms:
            self.hang(i, data, ms)

    def result(self):
        ms = time.ticks_diff(time.ticks_ms(), self.t0)
        gc.collect()
        return {"target": self.target, "inputs": self.n, "accepted": self.accepted,
                "rejected": self.rejected, "rejects_by_reason": self.reasons,
                "crashes": self.crashes, "crash_list": self.crash_list,
                "hangs": self.hangs, "hang_list": self.hang_list,
                "state_changes": self.changes, "change_list": self.change_list,
                "unlogged_rejects": self.unlogged, "replayed": self.replayed,
                "max_input_ms": self.max_ms,
                "seconds": ms / 1000, "vm": "%s %s" % (sys.implementation.name, ".".join(
                    str(v) for v in sys.implementation.version[:3])),
                "heap_bytes": gc.mem_alloc() + gc.mem_free()}


# -- the CS security module: parser (wan) and verification (verify) -------------------------
class Link:
    # the WAN link comm reads: one input's bytes at a time (give(), then comm's step reads them)
    def __init__(self):
        self.mv, self.at = memoryview(b""), 0

    def give(self, data):
        self.mv, self.at = memoryview(data), 0

    def readinto(self, buf):
        n = min(len(buf), len(self.mv) - self.at)
        buf[:n] = self.mv[self.at:self.at + n]
        self.at += n
        return n

    def write(self, data):
        pass


class CommPort:
    # comm's port: what it sends goes straight to cs_security's handler, as the kernel routes
    # it (policy.py: comm may send cs_security "frame_in" and "frame_err" only)
    def __init__(self, cs):
        self.cs = cs

    def send(self, to, kind, payload=None):
        if to != "cs_security" or kind not in ("frame_in", "frame_err") or not frozen(payload):
            raise TypeError("comm sent %s -> %s" % (kind, to))
        self.cs.handle("comm", kind, payload)
        return True

    def log(self, text):
        pass


def through_comm(cs):
    # the wan target's way in: each input a line, through the comm task into cs_security ->
    # feed(line), True when comm passed something on (a line not starting with "~" is a
    # terminal's noise, which comm drops unlogged by design)
    from tasks.comm import Comm

    link = Link()
    comm = Comm(CommPort(cs), {"wan": link})

    def feed(line):
        n = comm.frames_in
        link.give(line + b"\n")
        comm.step()
        return comm.frames_in > n

    return feed


def as_frames(cs):
    # the verify target's way in: each input a frame, as comm hands it on
    def feed(frame):
        cs.handle("comm", "frame_in", frame)
        return True

    return feed


def make_cs(cfg):
    from tasks import cs_security

    d = cfg["dir"]
    cs_security.KEYS = d + "/cs_keys.json"
    cs_security.COUNTERS = d + "/cs_ctr.json"
    store.save(cs_security.KEYS, {"meter": cfg["meter"], "master": cfg["master"]})
    store.save(cs_security.COUNTERS, {"down": cfg["down"], "up": 0})
    # the household's consent given, so that PROFILE's arguments are parsed (and fuzzed) for
    # the supplier too (lib/seal.py)
    import seal

    seal.CONSENT = d + "/consent"
    seal.set_consent(True)
    port = Port()
    cs = cs_security.CsSecurity(port, {"info": {"fw": "fuzz"}})
    return cs, port, cs_security.COUNTERS


def cs_state(cs, counters):
    # what a rejected frame must not change: the key, the down counter (RAM and flash),
    # accepted requests and the pending table (the up counter of an ERROR answer may move:
    # every answer carries a fresh one, PROTOCOL.md)
    # (copies: the counters are lists by role, changed in place)
    # (the file's "down" by role: a file from before roles holds the operator's alone, as an
    # int, which the first write of the counters turns into the list it stands for)
    down = store.load(counters, {}).get("down")
    if isinstance(down, int):
        down = [down]
    if down is not None:
        down = tuple(down) + (0,) * (len(cs._down) - len(down))
    return (cs.meter_id, cs._keys, tuple(cs._down), tuple(cs._down_res), cs.accepted,
            sorted(cs._pending.items()), down)


def feed_cs(st, cs, port, counters, feed, i, data, hang_ms, forged=None):
    # feed: through_comm's (data: a line) or as_frames' (data: a frame)
    before = cs_state(cs, counters)
    acc, rej, logs = cs.accepted, cs.rejected, port.logs
    t0 = time.ticks_ms()
    try:
        passed = feed(data)
    except Exception as e:  # anything escaping the handlers is a crash
        st.crash(i, data, e)
        return
    finally:
        st.timed(i, data, t0, hang_ms)
    if not passed:
        # no "~" line (a control byte or line end mutated in before it)
        if cs_state(cs, counters) != before or cs.rejected > rej or cs.accepted > acc:
            st.change(i, data, "a line comm dropped reached the CS module")
        why = "not a frame line: dropped by comm"
        st.reasons[why] = st.reasons.get(why, 0) + 1
        return
    if cs.accepted > acc:
        st.accepted += 1
        if cs.rejected > rej:  # authentic, fresh, but the request refused (BAD_ARGS, ...)
            r = "authentic, refused: " + reason(port.last_log or "?")
            st.reasons[r] = st.reasons.get(r, 0) + 1
        if forged is not None and forged:
            st.change(i, data, "forged frame accepted: " + forged)
        cs._pending.clear()  # the answer would come from the task: nothing waits on it
    elif cs.rejected > rej:
        st.reject(port.last_log or "?")
        if port.logs == logs:
            st.unlogged += 1
        if cs_state(cs, counters) != before:
            st.change(i, data, "rejected frame changed the CS state")
    else:
        st.crash(i, data, Exception("neither accepted nor rejected"))
    port.sent.clear()


def run_wan(cfg, rng, st):
    cs, port, counters = make_cs(cfg)
    feed = through_comm(cs)
    import policy

    # each kind under the keys and counter of the role the policy gives it, so that every
    # kind's argument checks are reached (not only POLICY refusals); INFO the operator's
    role_of = {}
    for r in range(len(policy.WAN_ROLES)):
        for k in policy.WAN_ROLES[r][1]:
            if k != wan.K_INFO:
                role_of[k] = r
    meter = cfg["meter"]
    seeds = [(k, bytes.fromhex(p)) for k, p in cfg["seeds"]]
    payloads = [p for _, p in seeds]
    tokens = [bytes.fromhex(t) for t in cfg["tokens"]]
    kinds = [k for k, _ in seeds]
    base = cfg["down"]
    # regression inputs first (frames the host sealed, counters above "down"): the outcome of
    # each is reported
    for line in cfg.get("replay", ()):
        line = bytes.fromhex(line)
        crashes, rej = st.crashes, cs.rejected
        feed_cs(st, cs, port, counters, feed, -1, line, cfg["hang_ms"])
        st.replayed.append("crash" if st.crashes > crashes else "rejected: " + port.last_log
                           if cs.rejected > rej else "accepted")
    for i in range(cfg["n"]):
        st.n += 1
        kind, payload = rng.pick(seeds)
        role = role_of.get(kind, 0)
        keys = cs._keys[role]
        if cs._down[role] > 0x7FFFFFF0:  # an accepted huge counter: start the window again
            cs._down[role] = base
            res = list(cs._down_res)
            res[role] = base
            cs._reserve(res, cs._up_res, cs._changed)
        if rng.chance(85):
            payload = mutate(payload, rng, payloads, tokens)
        payload = payload[:wan.PAYLOAD_CAP + 8]
        ver, flags, ref, mid = 1, role << wan.ROLE_SHIFT, 0, meter
        c = rng.below(100)
        down = cs._down[role]
        ctr = down + 1 if c < 80 else down - rng.below(3) if c < 88 else \
            0 if c < 91 else rng.pick(INTERESTING) if c < 96 else down + 1 + rng.below(1000)
        ctr &= 0xFFFFFFFF
        if rng.chance(25):
            f = rng.below(8)
            if f == 0:
                kind = rng.below(256)
            elif f == 1:
                kind = rng.pick(kinds) ^ (1 << rng.below(8))
            elif f == 2:
                flags = rng.below(256)
            elif f == 3:
                flags |= wan.FLAG_ENC
            elif f == 4:
                ref = rng.pick(INTERESTING)
            elif f == 5:
                ver = rng.pick(INTERESTING) & 0xFF
            elif f == 6:
                mid = meter ^ (1 << rng.below(64))
            else:
                flags |= wan.FLAG_RESP
        n = len(payload)
        nfield = n if rng.chance(95) else rng.pick(INTERESTING) & 0xFFFF
        body = payload
        if flags & wan.FLAG_ENC and rng.chance(80):
            body = wan._ctr_xor(keys[2], meter, ctr, payload[:wan.PAYLOAD_CAP])
        frame = struct.pack(">BBBQIIH", ver, kind, flags, mid, ctr, ref, nfield) + body
        frame += hmac_sha256.hmac_sha256(keys[0], frame)[:wan.MAC_LEN]  # the MAC
        line = wan.frame_to_line(frame)
        if rng.chance(8):
            # the line's own structure: "~", line ends, escapes whole, cut and unknown
            line = mutate(line, rng, None, (b"~", b"\r", b"\n", b"\x1b", b"\x1b[", b"\x1bJ",
                                            b"\x1b@", b"\x03", b"A", b"\x00"))
        feed_cs(st, cs, port, counters, feed, i, line, cfg["hang_ms"])
    return st


def run_verify(cfg, rng, st):
    cs, port, counters = make_cs(cfg)
    feed = as_frames(cs)
    fresh = [bytes.fromhex(f) for f in cfg["frames"]]  # valid frames, counters above "down"
    used = []  # frames accepted once: every later copy is a replay
    others = fresh + [bytes.fromhex(f) for f in cfg["foreign"]]
    for i in range(cfg["n"]):
        st.n += 1
        c = rng.below(100)
        if c < 3 and fresh:
            # a genuine frame, once: accepted (its counter is fresh); then only replays
            frame = fresh.pop(0)
            feed_cs(st, cs, port, counters, feed, i, frame, cfg["hang_ms"])
            used.append(frame)
            continue
        if c < 15 and used:
            frame = rng.pick(used)
            feed_cs(st, cs, port, counters, feed, i, frame, cfg["hang_ms"],
                    forged="replay")
            continue
        orig = rng.pick(fresh or used)
        frame = orig
        while frame == orig or frame in fresh:  # a splice can rebuild a genuine frame
            frame = mutate(orig, rng, others, None)
        feed_cs(st, cs, port, counters, feed, i, frame, cfg["hang_ms"],
                forged="mutated, no re-MAC")
    return st


# -- the DC security module: set-up chunks (chunk) and recovery (recover) -----------------------
class DcRig:
    def __init__(self, cfg):
        from tasks import dc_security

        self.d = cfg["dir"]
        store.save_bytes(self.d + dc_security.KEY_FILE,
                         (bytes.fromhex(cfg["sk"]), bytes.fromhex(cfg["pk"])))
        self.ctr = 0
        self._e = 0
        self.port = Port()
        self.meter = cfg["meter"]
        self.dc = dc_security.DcSecurity(self.port, {"entropy": self.entropy, "dir": self.d})

    def entropy(self, n):
        self._e += 1
        return hashlib.sha256(b"fuzz %d" % self._e).digest()[:n]

    def req(self, kind, body):
        """-> (code, answer body, steps) or raises; steps > MAX_STEPS: no answer (a hang)."""
        self.ctr += 1
        ref = self.ctr
        port = self.port
        port.sent.clear()
        self.dc.handle("cs_security", kind, (ref, self.meter, bytes(body)))
        steps = 0
        while True:
            for _to, k, p in port.sent:
                if k == "lopa_data" and p[0] == ref:
                    port.sent.clear()
                    return p[1], p[2], steps
            port.sent.clear()
            if steps > MAX_STEPS:
                return None, None, steps
            self.dc.step()
            steps += 1

    def must(self, kind, body):
        code, ans, _ = self.req(kind, body)
        if code != 0:
            raise RuntimeError("fuzz set-up: %s refused: %s" % (kind, ans))
        return ans


def dc_state(dc, d):
    s = dc._setup
    h = hashlib.sha256()
    if s is not None:
        # the set-up's meaning: members accepted so far (slots past s.got are scratch that
        # the next chunk overwrites; nothing reads them)
        for k in range(s.got):
            h.update(s.mem.id_at(k))
            h.update(s.mem.key_at(k))
        sv = (s.gid, s.n, s.m, s.lam, s.seq, s.got, s.received, s.self_seen, s.work is None)
    else:
        sv = None
    gs = []
    for gid in sorted(dc._groups):
        g = dc._groups[gid]
        gs.append((gid, g.n, g.m, g.last_t, bytes(g.h_t), bytes(g.h_c), bytes(g.h_C),
                   bytes(g.h_f), g.pre_t, g.pre, g.job_t))
    return (dc._sk, dc.pk, sv, h.digest(), gs, len(dc._recover), files_digest(d))


def feed_dc(st, rig, i, kind, body, hang_ms):
    """One request; -> code (0 accepted) or None (crash/hang)."""
    before = dc_state(rig.dc, rig.d)
    logs = rig.port.logs
    t0 = time.ticks_ms()
    try:
        code, ans, steps = rig.req(kind, body)
    except Exception as e:  # anything escaping the module is a crash
        st.crash(i, body, e)
        return None
    finally:
        st.timed(i, body, t0, hang_ms)
    if code is None:
        st.hang(i, body, -steps)
        return None
    if code == 0:
        st.accepted += 1
        return 0
    st.reject(ans if isinstance(ans, str) else "code %d" % code)
    if rig.port.logs == logs:
        st.unlogged += 1
    if dc_state(rig.dc, rig.d) != before:
        st.change(i, body, "refused %s changed the DC state" % kind)
    return code


def clone_setup(s):
    # a copy of a pending set-up (tasks/dc_setup.py Setup): its fields, its member blocks
    c = type(s)(s.gid, s.n, s.m, s.lam, s.my_id)
    for name in dir(s):
        if not name.startswith("__") and name != "mem":
            v = getattr(s, name)
            if not callable(v):
                setattr(c, name, v)
    c.mem = type(s.mem)(s.n, [bytearray(b) for b in s.mem.blocks])
    return c


def run_chunk(cfg, rng, st):
    rig = DcRig(cfg)
    begin = bytes.fromhex(cfg["begin"])
    chunks = [bytes.fromhex(c) for c in cfg["chunks"]]  # seq 0 (this meter alone), seq 1..
    commit = bytes.fromhex(cfg["commit"])
    other = [begin, commit] + chunks + [bytes.fromhex(x) for x in cfg["extra"]]
    tokens = [bytes.fromhex(t) for t in cfg["tokens"]]
    gids = [bytes.fromhex(g) for g in cfg["gids"]]
    # The states an input starts from: the pending set-up after GROUP_BEGIN and after each
    # chunk, each made once through the real requests and kept as a copy (a chunk of others
    # costs X25519 derivations: ~0.1 s each on the VM).
    snaps = []
    for k in range(len(chunks) + 1):
        rig.must("group_begin", begin)
        for c in chunks[:k]:
            rig.must("group_keys", c)
        snaps.append(clone_setup(rig.dc._setup))
    state = -1  # chunks done in the pending set-up, -1: unknown (restore)
    for i in range(cfg["n"]):
        st.n += 1
        want = state if state >= 0 and rng.chance(85) else rng.below(len(chunks) + 1)
        if want != state:
            for g in gids:  # a committed group from an accepted commit: gone again
                if g in rig.dc._groups:
                    rig.must("group_delete", bytes((len(g),)) + g)
            rig.dc._setup = clone_setup(snaps[want])
            state = want
        c = rng.below(100)
        if c < 15:
            kind, body = "group_begin", begin
        elif c < 25:
            kind, body = "group_commit", commit
        else:
            kind, body = "group_keys", chunks[want if want < len(chunks) else rng.below(
                len(chunks))]
        if rng.chance(90):
            body = mutate(body, rng, other, tokens)
        if rng.chance(3):
            kind = rng.pick(("group_begin", "group_keys", "group_commit"))
        code = feed_dc(st, rig, i, kind, body, cfg["hang_ms"])
        if code != 0:
            if code is None:
                state = -1
            continue
        state = -1  # accepted: the next input rebuilds its state
    return st


def run_recover(cfg, rng, st):
    rig = DcRig(cfg)
    rig.must("group_begin", bytes.fromhex(cfg["begin"]))
    for c in cfg["chunks"]:
        rig.must("group_keys", bytes.fromhex(c))
    rig.must("group_commit", bytes.fromhex(cfg["commit"]))
    dc = rig.dc
    gid = bytes.fromhex(cfg["gid"])
    t0 = cfg["t0"]
    for t in range(t0, t0 + 16):  # 16 closed intervals, then every ciphertext but the last
        dc.handle("metrology", "interval_value", (t, 1000 + t))
        for _ in range(200):
            dc.step()
    for t in range(t0, t0 + 15):
        rig.must("ciphertext", bytes((len(gid),)) + gid + struct.pack(">I", t))
    g = dc._groups[gid]
    saved_f, saved_c = bytes(g.h_f), list(g.h_C)
    seeds = [bytes.fromhex(b) for b in cfg["seeds"]]
    tokens = [bytes.fromhex(t) for t in cfg["tokens"]]
    for i in range(cfg["n"]):
        st.n += 1
        body = rng.pick(seeds)
        if rng.chance(85):
            body = mutate(body, rng, seeds, tokens)
        code = feed_dc(st, rig, i, "recover", body, cfg["hang_ms"])
        if code == 0 or code is None:
            # an answered recovery erased C_i(t): put the round history back for the next
            g.h_f[:] = saved_f
            for k in range(len(saved_c)):
                g.h_C[k] = saved_c[k]
            dc._recover = []
    return st


TARGETS = {"wan": run_wan, "verify": run_verify, "chunk": run_chunk, "recover": run_recover}


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    st = Stats(cfg["target"])
    try:
        os.mkdir(cfg["dir"])
    except OSError:
        pass
    gc.collect()
    TARGETS[cfg["target"]](cfg, Rng(cfg["seed"]), st)
    print("FUZZ " + json.dumps(st.result()))


main()
