"""The CS security module's counters (firmware/tasks/cs_security.py) on the real MicroPython VM:
a command's counter must be above the last accepted; both counters are reserved in steps and
the reservation is persisted before use, so that a reboot (a new module on the same files)
never accepts a frame accepted before it, and never seals an answer under an uplink counter
used before it (AES-CTR would reuse a key stream). The power-cut campaign checks the same on
virtual meters (tests_device/test_powercut.py); these are the quick, exact cases."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Run = Callable[..., str]

HARNESS = """
import json
import store, wan
from tasks import cs_security
D = {d!r}
cs_security.KEYS = D + "/cs_keys.json"
cs_security.COUNTERS = D + "/cs_ctr.json"
METER = 4242
MASTER = bytes(range(32))
store.save(cs_security.KEYS, {{"meter": METER, "master": MASTER.hex()}})
KEYS = wan.derive_keys(METER, MASTER)

class Port:
    def __init__(self):
        self.sent = []
        self.logs = []
    def send(self, to, kind, payload=None):
        self.sent.append((to, kind, payload))
        return True
    def log(self, text):
        self.logs.append(text)
    def log_flood(self, text):
        self.logs.append(text)

def boot():
    # a reboot: a new module on the same files
    global cs, port
    port = Port()
    cs = cs_security.CsSecurity(port, {{"info": {{"fw": "test"}}}})

def frame(ctr, kind=wan.K_INFO):
    # a command as comm hands it on (the line's escapes undone)
    return bytes(wan.seal(KEYS, METER, False, kind, ctr, 0, b""))

def feed(f):
    # -> the answers, opened as the head-end opens them: [kind, up ctr, ref, payload text]
    cs.handle("comm", "frame_in", f)
    out = []
    for to, kind, p in port.sent:
        assert to == "comm" and kind == "frame_out"
        k, _, ctr, ref, body = wan.open_frame(KEYS, METER, True, p)
        if k == wan.K_ERROR and body[0] == wan.E_REPLAY and len(body) == 9:
            # REPLAY: the highest counter used, the last changing command's (the role's)
            body = [body[0], int.from_bytes(body[1:5], "big"), int.from_bytes(body[5:9], "big")]
        elif k == wan.K_ERROR:
            body = list(wan.parse_error(body))
        else:
            body = json.loads(body)
        out.append([k, ctr, ref, body])
    port.sent = []
    return out

boot()
"""


def run(micropython: Run, tmp_path: Path, body: str) -> Any:
    out = micropython(HARNESS.format(d=str(tmp_path)) + body)
    return json.loads(out.strip().splitlines()[-1])


INFO, ERROR, E_REPLAY = 0x01, 0x7F, 3


def test_a_replayed_or_older_frame_is_refused_and_changes_nothing(micropython: Run,
                                                                  tmp_path: Path) -> None:
    r = run(micropython, tmp_path, """
first = feed(frame(5))
state = (list(cs._down), list(cs._down_res), cs.accepted, store.load(cs_security.COUNTERS))
nlog = len(port.logs)
again = feed(frame(5))          # the same frame, byte for byte
older = feed(frame(4))
unchanged = (cs._down, cs._down_res, cs.accepted, store.load(cs_security.COUNTERS)) == state
logs = port.logs[nlog:]
after = feed(frame(6))
print(json.dumps({"first": first, "again": again, "older": older, "unchanged": unchanged,
                  "logs": logs, "after": after}))
""")
    assert [a[0] for a in r["first"]] == [INFO] and r["first"][0][2] == 5
    # REPLAY, authenticated, naming the highest counter consumed (the head-end resyncs)
    # (and the last command that may have changed the meter: none, INFO only reads)
    assert r["again"] == [[ERROR, r["again"][0][1], 5, [E_REPLAY, 5, 0]]]
    assert r["older"] == [[ERROR, r["older"][0][1], 4, [E_REPLAY, 5, 0]]]
    assert r["unchanged"]
    assert r["logs"] == ["wan: rejected (replay ctr 5 <= 5 role 0)",
                         "wan: rejected (replay ctr 4 <= 5 role 0)"]
    assert [a[0] for a in r["after"]] == [INFO] and r["after"][0][2] == 6


def test_a_frame_accepted_before_a_reboot_is_refused_after_it(micropython: Run,
                                                              tmp_path: Path) -> None:
    """Nothing else is sent between the reboot and the replays: a fresh authentic frame first
    would raise the counter itself and hide a reservation that was never persisted."""
    r = run(micropython, tmp_path, """
R = cs_security.RESERVE
ctrs = (1, 2, R + 10, R + 11)      # R + 10: beyond the first reservation
accepted = [feed(frame(c))[0][0] for c in ctrs]
boot()
replays = [feed(frame(c))[0] for c in ctrs]
fresh = feed(frame(cs._down[0] + 1))[0][0]
print(json.dumps({"accepted": accepted, "replays": replays, "fresh": fresh, "ctrs": ctrs}))
""")
    assert r["accepted"] == [INFO] * 4
    for ans, ctr in zip(r["replays"], r["ctrs"], strict=True):
        assert ans[0] == ERROR and ans[2] == ctr and ans[3][0] == E_REPLAY, (ctr, ans)
        assert ans[3][1] >= r["ctrs"][-1], ans  # the counters up to the reservation count as used
    assert r["fresh"] == INFO


def test_no_uplink_counter_is_used_twice_across_reboots(micropython: Run,
                                                        tmp_path: Path) -> None:
    """Answers before and after each of several reboots, one of them after more answers than
    a reservation holds: every uplink counter the module ever sealed under is new."""
    r = run(micropython, tmp_path, """
ups = []
c = 0
for answers in (1, 3, 40, 2, 70, 1):
    for _ in range(answers):
        c += 1
        ups += [a[1] for a in feed(frame(c))]
    boot()
print(json.dumps({"ups": ups}))
""")
    ups = r["ups"]
    assert len(ups) == 117
    assert ups == sorted(set(ups)), ups  # strictly increasing: never one used twice


def test_a_request_without_memory_to_route_it_is_answered_failed_and_changes_nothing(
        micropython: Run, tmp_path: Path) -> None:
    # A board's heap, full or in pieces, at the moment a request is routed (the Pyboard's, 4
    # workers: cs_security's MemoryError was a silence the head-end waited 30 s on). Before it
    # is routed nothing was carried out: FAILED "out of memory". A task's refusal that cannot
    # be written out for lack of memory is said short; a task's answer of what it carried out
    # is never turned into a refusal.
    r = run(micropython, tmp_path, """
import lazy
real_call = lazy.call
def no_memory(*a):
    raise MemoryError("memory allocation failed")
cs_security.lazy.call = no_memory        # TIME_SET's JSON arguments: tasks/cs_rare.py
a = feed(frame(5, wan.K_TIME_SET))
routed = [s for s in port.sent if s[0] != "comm"]
pending = len(cs._pending)
cs_security.lazy.call = real_call
cs.handle("comm", "frame_in", frame(6, wan.K_STATS))   # routed to the kernel, not answered yet
b = [[to, kind] for to, kind, p in port.sent]
port.sent = []
real_log = port.log_flood
def log_no_memory(text):
    port.log_flood = real_log
    raise MemoryError("memory allocation failed")
port.log_flood = log_no_memory          # the refusal's log line finds no memory
cs.handle("kernel", "stats_done", (6, 7, "no window closed yet"))
out = []
for to, kind, p in port.sent:
    k, _, ctr, ref, body = wan.open_frame(KEYS, METER, True, p)
    out.append([k, ref, list(wan.parse_error(body))])
port.sent = []
cs._pending[9] = (wan.K_GROUP_COMMIT, True, 0)   # a task's success answer, no memory to seal it
real_send = cs._send
def send_no_memory(*a, **k):
    raise MemoryError("memory allocation failed")
cs._send = send_no_memory
try:
    cs.handle("dc_security", "lopa_data", (9, 0, b"done"))
    d = "answered"
except MemoryError:
    d = "silence"
cs._send = real_send
port.sent = []
port_send = port.send
def route_no_memory(to, kind, payload=None):   # the routing itself finds no memory
    if to != "comm":
        raise MemoryError("memory allocation failed")
    return port_send(to, kind, payload)
port.send = route_no_memory
cs.handle("comm", "frame_in", frame(10, wan.K_STATS))
port.send = port_send
e = [[to, kind] for to, kind, p in port.sent]
stale = 10 in cs._pending
print(json.dumps({"a": a, "routed": routed, "pending": pending, "b": b, "c": out, "d": d,
                  "accepted": cs.accepted, "e": e, "stale": stale}))
""")
    assert r["a"] == [[ERROR, r["a"][0][1], 5, [7, "out of memory"]]]
    assert r["routed"] == [] and r["pending"] == 0  # nothing reached a task, nothing expected
    assert r["b"] == [["kernel", "stats"]]  # routed (its answer comes from the kernel)
    assert r["c"] == [[ERROR, 6, [7, "out of memory"]]]
    assert r["d"] == "silence"  # never "FAILED" for what was carried out
    assert r["e"] == [["comm", "frame_out"]]  # FAILED "out of memory", to the head-end
    assert r["stale"] is False  # a request whose routing found no memory is not kept pending


def test_a_frame_whose_check_found_no_memory_once_is_checked_again(micropython: Run,
                                                                   tmp_path: Path) -> None:
    # Its MAC not yet known good, such a frame may not be answered: the MemoryError was a
    # silence the head-end waited out (the Pyboard's heap, a GROUP_KEYS). After a collection
    # the check runs again; a second MemoryError is the kernel's task fault, as before.
    r = run(micropython, tmp_path, """
real_open = wan.open_frame
fails = [1]
def open_no_memory(*a):
    if fails[0]:
        fails[0] -= 1
        raise MemoryError("memory allocation failed")
    return real_open(*a)
cs_security.wan.open_frame = open_no_memory
a = feed(frame(5))
fails[0] = 2
try:
    feed(frame(6))
    b = "answered"
except MemoryError:
    b = "MemoryError"
fails[0] = 1                              # a forged frame (its MAC broken), the same fault
forged = bytearray(frame(8))
forged[-1] ^= 1
accepted = cs.accepted
port.sent = []
cs.handle("comm", "frame_in", bytes(forged))
f = [len(port.sent), cs.accepted - accepted]
cs_security.wan.open_frame = real_open
c = feed(frame(7))
print(json.dumps({"a": a, "b": b, "c": c, "f": f}))
""")
    assert [x[0] for x in r["a"]] == [INFO] and r["a"][0][2] == 5
    assert r["b"] == "MemoryError"
    assert [x[0] for x in r["c"]] == [INFO] and r["c"][0][2] == 7
    # the second check is the whole check: a forged frame is still not answered nor accepted
    assert r["f"] == [0, 0]
