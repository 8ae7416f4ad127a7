"""The off-switch on the real MicroPython VM (192 KB heap): its own key and counter, the arm +
button reconnect, rate limits, the tamper latch, state across reset, the cross-core Link on a
real VM thread, and every kind of bad input refused, logged and leaving the relay unmoved.

The Core runs here with fake pins and a fake clock (ms), one poll() at a time, so that windows
and rate limits are exact; test_core_runs_on_a_vm_thread runs it on a real `_thread`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests_host.conftest import FIRMWARE

Run = Callable[..., str]

PRELUDE = """
import json, os
import store
import offswitch_auth as osa
from tasks import offswitch
D = {d!r}
KEY = bytes(range(32))
METER = 4242
LIMITS = {{"max_per_hour": 4, "min_spacing_s": 5, "arm_window_s": 30}}
store.save(D + "/keys.json", dict({{"meter": METER, "key": KEY.hex()}}, **LIMITS))
KEYS = osa.derive(KEY, METER)
import struct
from hmac_sha256 import hmac_sha256_pads

def command(keys, meter, op, ctr):
    # the head-end's side (the firmware never signs a command)
    head = struct.pack(">BBQI", 1, op, meter, ctr)
    return head + hmac_sha256_pads(keys[0], head)[:16]

def open_reply(keys, meter, data):
    # (op, result, state, ctr, last, nonce) if the off-switch signed it, else None
    if len(data) != 44 or hmac_sha256_pads(keys[1], data[:28])[:16] != data[28:]:
        return None
    v = struct.unpack(">BBBBQII", data[:20])
    return (v[1], v[2], v[3], v[5], v[6], bytes(data[20:28]))

class Pin:
    def __init__(self, v=0):
        self.v = v
        self.writes = 0
    def value(self, v=None):
        if v is None:
            return self.v
        self.v = 1 if v else 0
        self.writes += 1

clock = [0]
pins = {{"relay": Pin({relay}), "button": Pin(), "tamper": Pin()}}
link = offswitch.Link()
logs = []
states = []
stored = []
KIND = {{"switch": 1, "switch_status": 2, "credit_disconnect": 3}}

def boot(keys_path=D + "/keys.json"):
    global core
    core = offswitch.Core(pins, link, lambda: clock[0], keys_path, D + "/state.json")
    drain()
    return core

seq = [link.n[offswitch.N_STATE_SEQ]]

def drain():
    # what the proxy on the main core does: store core 1's record, word its events, take
    # its answers and the relay state
    from tasks import offswitch_text
    out = []
    if link.persist_wanted():
        store.save_bytes(D + "/state.json", bytes(link.record))
        stored.append(link.n[offswitch.N_REQ_RELAY])
        link.persisted(True)
    while True:
        ev = link.take_event()
        if ev is None:
            break
        logs.append(offswitch_text.words(*ev))
        out.append(("log", logs[-1]))
    while True:
        d = link.take_done()
        if d is None:
            break
        out.append(("done", (d[0], 0, d[1])))
    if link.n[offswitch.N_STATE_SEQ] != seq[0]:
        seq[0] = link.n[offswitch.N_STATE_SEQ]
        states.append(list(link.state))
        out.append(("state", tuple(link.state)))
    return out

def poll(n=1):
    got = []
    for _ in range(n):
        core.poll()
        got += drain()
    return got

def put(kind, ref, data):
    return link.put_in(KIND[kind], ref, data)

def send(token, kind="switch", ref=1):
    put(kind, ref, token)
    for _ in range(4):
        for k, p in poll():
            if k == "done":
                r = open_reply(KEYS, METER, p[2])
                return None if r is None else list(r[:5])

def cmd(op, ctr, keys=None, meter=METER):
    return send(command(keys or KEYS, meter, op, ctr))

def press(pin="button", ms=200):
    pins[pin].v = 1
    for _ in range(ms // 10):
        clock[0] += 10
        poll()
    pins[pin].v = 0
    clock[0] += 10
    poll()

def after(s):
    clock[0] += int(s * 1000)

def out(**kw):
    kw.setdefault("relay", pins["relay"].v)
    kw.setdefault("logs", logs)
    print(json.dumps(kw))

boot()
"""

OK, OFF, ON, UNLOCK = 0, 1, 2, 3


def run_core(micropython: Run, tmp_path: Path, body: str, relay: int = 1) -> dict[str, Any]:
    out = micropython(PRELUDE.format(d=str(tmp_path), relay=relay) + body)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def test_authentic_off_opens_the_relay_and_is_logged(micropython: Run, tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
writes = pins["relay"].writes
res = cmd(osa.OP_OFF, 1)
out(res=res, writes=pins["relay"].writes - writes, ctr=core.ctr)
""")
    assert r["res"] == [OFF, OK, 0, 1, 1]  # op, result, state (open), ctr, last accepted
    assert r["relay"] == 0 and r["writes"] == 1 and r["ctr"] == 1
    assert r["logs"] == ["boot: relay 1 armed 0 locked 0 ctr 0", "OFF #1: relay opened"]


@pytest.mark.parametrize(("what", "body", "result", "logged"), [
    ("unsigned", "send(b'')", 1, "op0 #0 refused: malformed"),
    ("truncated", "send(command(KEYS, METER, osa.OP_OFF, 1)[:-1])", 1, "refused: malformed"),
    ("forged", "cmd(osa.OP_OFF, 1, keys=osa.derive(bytes(32), METER))", 3,
     "OFF #1 refused: bad MAC"),
    ("tampered", "send(command(KEYS, METER, osa.OP_ON, 1)[:1] + b'\\x01' + "
                 "command(KEYS, METER, osa.OP_ON, 1)[2:])", 3, "OFF #1 refused: bad MAC"),
    ("another meter's", "cmd(osa.OP_OFF, 1, meter=METER + 1)", 2,
     "OFF #1 refused: for meter 4243"),
    ("another meter's, its own key", "cmd(osa.OP_OFF, 1, keys=osa.derive(KEY, METER + 1), "
                                      "meter=METER + 1)", 2, "refused: for meter 4243"),
])
def test_bad_commands_are_refused_logged_and_move_nothing(
        micropython: Run, tmp_path: Path, what: str, body: str, result: int,
        logged: str) -> None:
    r = run_core(micropython, tmp_path, f"""
writes = pins["relay"].writes
res = {body}
out(res=res, writes=pins["relay"].writes - writes, ctr=core.ctr)
""")
    assert r["res"][1] == result, what
    assert r["res"][2] == 1  # the signed answer says: relay still closed
    assert r["relay"] == 1 and r["writes"] == 0 and r["ctr"] == 0, what
    assert any(logged in line for line in r["logs"]), r["logs"]


def test_a_mac_wrong_in_any_one_of_its_16_bytes_is_refused(micropython: Run,
                                                          tmp_path: Path) -> None:
    """Every byte of the 16-byte MAC counts: a command whose MAC is right but for one bit of
    one byte (the first, the last, any between) is refused as a bad MAC, moves nothing and
    consumes no counter; the same command with its MAC intact is then accepted."""
    r = run_core(micropython, tmp_path, """
good = command(KEYS, METER, osa.OP_OFF, 1)
writes = pins["relay"].writes
res = []
for i in range(16):
    for bit in (0, 7):
        bad = bytearray(good)
        bad[14 + i] ^= 1 << bit
        res.append(send(bytes(bad))[1])
        after(60)                        # no refusal is a rate limit's
refused_ctr, refused_writes = core.ctr, pins["relay"].writes - writes
ok = send(good)
out(res=res, ctr=refused_ctr, writes=refused_writes, ok=ok)
""")
    assert r["res"] == [3] * 32  # R_BAD_MAC for each of the 16 bytes, low and high bit
    assert r["ctr"] == 0 and r["writes"] == 0
    assert r["ok"][1] == OK and r["relay"] == 0
    assert any("OFF #1 refused: bad MAC" in line for line in r["logs"]), r["logs"]


def test_replayed_and_reordered_commands_are_refused(micropython: Run, tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
off5 = command(KEYS, METER, osa.OP_OFF, 5)
a = send(off5)
after(10)
b = send(off5)                      # replayed
c = cmd(osa.OP_ON, 3)               # older counter
out(res=[a, b, c], ctr=core.ctr, armed=core.armed)
""")
    assert r["res"][0][1] == OK and r["res"][1][1] == 4 and r["res"][2][1] == 4
    assert r["res"][1][4] == 5  # REPLAY answers carry the last accepted counter (resync)
    assert r["relay"] == 0 and r["ctr"] == 5 and r["armed"] == 0
    assert "OFF #5 refused: replay" in r["logs"] and "ON #3 refused: replay" in r["logs"]


def test_reconnect_only_arms_and_the_button_closes_within_the_window(
        micropython: Run, tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
cmd(osa.OP_OFF, 1)
after(6)
res = cmd(osa.OP_ON, 2)
poll(50)
armed_open = (pins["relay"].v, core.armed)
after(10)
press()
out(res=res, armed_open=armed_open, armed=core.armed, states=states)
""")
    assert r["res"] == [ON, OK, 2, 2, 2]  # state: armed, relay open
    assert r["armed_open"] == [0, 1]  # no button: the relay stays open
    assert r["relay"] == 1 and r["armed"] == 0
    assert "ON #2: armed 30s: press button" in r["logs"]
    assert r["logs"][-1] == "button: reconnect confirmed, relay closed"
    assert r["states"][-3:] == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]


def test_no_press_or_a_late_press_leaves_the_relay_open(micropython: Run,
                                                         tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
press()                              # nothing armed: a button alone does nothing
first = pins["relay"].v
cmd(osa.OP_OFF, 1)
after(6)
cmd(osa.OP_ON, 2)
after(31)
poll()
press()                              # after the window
out(first=first, armed=core.armed)
""", relay=0)
    assert r["first"] == 0 and r["relay"] == 0 and r["armed"] == 0
    assert "arm window over: relay stays open" in r["logs"]
    assert not any("closed" in line for line in r["logs"])


def test_a_held_button_is_not_a_press(micropython: Run, tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
cmd(osa.OP_OFF, 1)
pins["button"].v = 1                 # held down before the reconnect arrives
poll(5)
after(6)
cmd(osa.OP_ON, 2)
poll(20)
held = pins["relay"].v
pins["button"].v = 0
poll()
press()                              # a real press
out(held=held)
""")
    assert r["held"] == 0 and r["relay"] == 1


def test_rate_limits_spacing_and_per_hour(micropython: Run, tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
res = []
res.append(cmd(osa.OP_OFF, 1)[1])
res.append(cmd(osa.OP_ON, 2)[1])        # 0 s later: under the 5-s spacing
for i in range(3, 20):                  # a flood, 5 s apart
    after(5)
    res.append(cmd(osa.OP_OFF if i % 2 else osa.OP_ON, i)[1])
after(3600)
res.append(cmd(osa.OP_OFF, 20)[1])      # an hour later: allowed again
out(res=res, ctr=core.ctr)
""")
    res = r["res"]
    assert res[0] == OK and res[1] == 5  # spacing
    assert res[2:5] == [OK, OK, OK]  # 4 per hour in all
    assert set(res[5:19]) == {5}  # the rest of the flood: refused
    assert res[19] == OK
    assert r["ctr"] == 20  # refused but authentic: every counter consumed
    assert "ON #2: refused: rate limit: spacing" in r["logs"]
    assert any("rate limit: 4/h" in line for line in r["logs"])


def test_tamper_opens_locks_and_only_an_authenticated_unlock_clears_it(
        micropython: Run, tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
pins["tamper"].v = 1
poll()
opened = pins["relay"].v
after(6)
on = cmd(osa.OP_ON, 1)[1]               # refused: locked
un1 = cmd(osa.OP_UNLOCK, 2)[1]          # refused: tamper input still active
pins["tamper"].v = 0
poll()
forged = cmd(osa.OP_UNLOCK, 3, keys=osa.derive(bytes(32), METER))[1]
press()
still = (pins["relay"].v, core.locked)
un2 = cmd(osa.OP_UNLOCK, 4)[1]
after(6)
on2 = cmd(osa.OP_ON, 5)[1]
press()
out(opened=opened, res=[on, un1, forged, un2, on2], still=still, locked=core.locked)
""")
    assert r["opened"] == 0
    assert r["res"] == [6, 7, 3, OK, OK]  # locked, tamper active, bad MAC, ok, ok
    assert r["still"] == [0, 1]
    assert r["relay"] == 1 and r["locked"] == 0
    assert "TAMPER: relay opened, locked" in r["logs"]
    assert "UNLOCK #4: unlocked" in r["logs"]


def test_tamper_during_an_armed_reconnect_disarms_and_locks(micropython: Run,
                                                             tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
cmd(osa.OP_OFF, 1)
after(6)
cmd(osa.OP_ON, 2)
press("tamper")
press()                                 # the button no longer closes anything
out(armed=core.armed, locked=core.locked)
""")
    assert r["relay"] == 0 and r["armed"] == 0 and r["locked"] == 1
    assert "TAMPER: locked (relay was open)" in r["logs"]
    assert r["logs"][-1] == "tamper input cleared"


def test_state_survives_reset_and_the_relay_never_toggles_at_boot(micropython: Run,
                                                                   tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
cmd(osa.OP_OFF, 1)
after(6)
cmd(osa.OP_ON, 2)                       # armed, 30-s window
after(7)
clock[0] = 0                            # power cut: ticks restart from 0
w = pins["relay"].writes
boot()
again = (core.relay, core.armed, core.locked, core.ctr, pins["relay"].writes - w)
replay = cmd(osa.OP_ON, 2)[1]           # the counter was persisted
spacing = cmd(osa.OP_OFF, 3)[1]         # so were the rate-limit times (0 s since ON: refused)
after(10)
press()                                 # the window carried over the reset (13 s used)
closed = pins["relay"].v
pins["relay"].v = 0                     # a relay that did not latch over a power cut
w = pins["relay"].writes
boot()
out(again=again, replay=replay, spacing=spacing, closed=closed,
    boot_writes=pins["relay"].writes - w)
""")
    assert r["again"] == [0, 1, 0, 2, 0]  # relay open, armed, not locked, ctr 2; no pin write
    assert r["replay"] == 4 and r["spacing"] == 5
    assert r["closed"] == 1
    assert r["relay"] == 1 and r["boot_writes"] == 1  # driven back to the commanded state
    assert "boot: relay pin 0 set to 1" in r["logs"]


def test_a_new_key_resets_the_counter(micropython: Run, tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
cmd(osa.OP_OFF, 9)
KEY2 = bytes(32 * [7])
store.save(D + "/keys2.json", dict({"meter": METER, "key": KEY2.hex()}, **LIMITS))
boot(D + "/keys2.json")
KEYS = osa.derive(KEY2, METER)
after(6)
res = cmd(osa.OP_ON, 1)
out(res=res[1], relay_state=core.relay, ctr=core.ctr)
""")
    assert r["res"] == OK and r["ctr"] == 1 and r["relay_state"] == 0
    assert "new key: counter reset" in r["logs"]


def test_status_is_signed_over_a_nonce_and_not_logged(micropython: Run, tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
n = len(logs)
put("switch_status", 7, b"12345678")
done = [p for k, p in poll(2) if k == "done"][0]
rep = open_reply(KEYS, METER, done[2])
bad = open_reply(osa.derive(bytes(32), METER), METER, done[2])
out(ref=done[0], rep=[rep[0], rep[1], rep[2], rep[5].decode()], bad=bad, new_logs=logs[n:])
""")
    assert r["ref"] == 7 and r["rep"] == [0, OK, 1, "12345678"]
    assert r["bad"] is None and r["new_logs"] == []


def test_credit_may_only_disconnect(micropython: Run, tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
put("credit_disconnect", 0, None)
poll(2)
first = pins["relay"].v
put("credit_disconnect", 0, None)   # already open: nothing to do, nothing logged
poll(2)
n = len(logs)
out(first=first, new=logs[n:])
""")
    assert r["first"] == 0 and r["relay"] == 0
    assert "credit: local disconnect, relay opened" in r["logs"]
    assert r["new"] == []


def test_a_flood_of_refusals_cannot_evict_the_log(micropython: Run, tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
cmd(osa.OP_OFF, 1)
for i in range(100):
    cmd(osa.OP_OFF, 1000 + i, keys=osa.derive(bytes(32), METER))
n_flood = len(logs)
after(3600)
cmd(osa.OP_OFF, 2)
out(n_flood=n_flood, last=logs[-2:])
""")
    # boot + OFF + 32 refusals; then the count of the rest when the hour is over
    assert r["n_flood"] == 2 + 32
    assert r["last"] == ["68 more refusals (log cap)", "OFF #2: already open"]


def test_core_runs_on_a_vm_thread(micropython: Run, tmp_path: Path) -> None:
    # The real thing: Core.run() on a _thread, the main thread talking through the Link only
    # (and storing the record core 1 hands it, as the proxy does).
    r = run_core(micropython, tmp_path, """
import time, _thread
core = offswitch.Core(pins, link, None, D + "/keys.json", D + "/state.json")
drain()
offswitch.start(core)
def ask(token, ref):
    put("switch", ref, token)
    t = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t) < 2000:
        for k, p in drain():
            if k == "done" and p[0] == ref:
                return list(open_reply(KEYS, METER, p[2])[:2])
        time.sleep_ms(1)
a = ask(command(KEYS, METER, osa.OP_OFF, 1), 1)
pins["tamper"].v = 1
time.sleep_ms(50)
drain()
locked = core.locked
link.running = False
time.sleep_ms(50)
out(a=a, locked=locked, stored=stored)
""")
    assert r["a"] == [OFF, OK] and r["relay"] == 0 and r["locked"] == 1
    assert r["stored"] == [0, 0]  # the OFF, then the tamper lock: both handed to the main core


def test_the_link_is_safe_across_threads(micropython: Run) -> None:
    out = micropython("""
import _thread, time, json
from tasks import offswitch
link = offswitch.Link(cap_ev=8)
N = 2000
done = []
def producer():
    # core 1's side, as Core._log does it
    i = 0
    k = link.n
    while i < N:
        with link._lock:
            if k[5] < 8:                       # _EV_N
                o = (k[4] + k[5]) % 8 * 16     # _EV_HEAD
                link.ev[o] = i & 0xFF
                link.ev[o + 1] = i >> 8
                k[5] += 1
                i += 1
    done.append(1)
_thread.start_new_thread(producer, ())
got = []
t = time.ticks_ms()
while len(got) < N and time.ticks_diff(time.ticks_ms(), t) < 20000:
    it = link.take_event()
    if it is not None:
        got.append(it[0][0] | it[0][1] << 8)
print(json.dumps({"n": len(got), "in_order": got == list(range(N)), "done": done}))
""")
    r = json.loads(out.strip().splitlines()[-1])
    assert r == {"n": 2000, "in_order": True, "done": [1]}


def test_offswitch_task_modules_hold_no_mutable_state(micropython: Run) -> None:
    out = micropython("""
import json
mods = {}
for name in ("tasks.offswitch", "tasks.credit", "tasks.han"):
    m = __import__(name, None, None, ["x"])
    bad = []
    for g in dir(m):
        v = getattr(m, g)
        if g.startswith("__") or isinstance(v, (int, float, str, bytes, tuple, type)):
            continue
        if type(v).__name__ in ("function", "module", "bound_method", "closure"):
            continue
        bad.append(g + ":" + type(v).__name__)
    mods[name] = bad
print(json.dumps(mods))
""")
    mods = json.loads(out.strip().splitlines()[-1])
    assert mods == {m: [] for m in mods} and len(mods) == 3


# -- core 1 after its start: no allocation, no file, no import ----------------------------------
# A whole working session on a real VM thread: commands, every kind of refusal, the rate limits,
# an arm + button reconnect, an arm window that runs out, tamper (while a record is stored and
# not), UNLOCK, status, a credit disconnect, a flood past the refusal log cap, and the
# off-switch's clock wrapping. `core1()` is what the thread runs, with GUARD (the test's) set
# up first; the main thread plays core 0 (drain(): storing the records, wording the events).
SESSION = """
import time, _thread
GUARD_SETUP = None   # set by the test: run on core 1 before the loop
GUARD_END = None     # ... and after it; returns what the test checks
core = offswitch.Core(pins, link, lambda: clock[0], D + "/keys.json", D + "/state.json")
drain()
core._clock = 0x1FFFFFFF - 20000  # the clock wraps 20 s into the session
result = {}
def core1():
    GUARD_SETUP()
    try:
        core.run()
    finally:
        result["end"] = GUARD_END()

def wait_polls(n=6):
    time.sleep_ms(12 * n)
    drain()

def ask(token, kind="switch", ref=[100]):
    ref[0] += 1
    put(kind, ref[0], token)
    t = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t) < 3000:
        for k, p in drain():
            if k == "done" and p[0] == ref[0]:
                r = open_reply(KEYS if kind == "switch" or core._keyed else None, METER, p[2])
                return r[1] if r else "unsigned"
        time.sleep_ms(2)
    return "no answer"

def session():
    res = []
    res.append(ask(command(KEYS, METER, osa.OP_OFF, 1)))                         # 0 OK
    res.append(ask(command(osa.derive(bytes(32), METER), METER, osa.OP_OFF, 2)))  # 3 bad MAC
    res.append(ask(command(KEYS, METER, osa.OP_OFF, 1)))                         # 4 replay
    res.append(ask(b"\\x01\\x02"))                                                 # 1 malformed
    res.append(ask(command(KEYS, METER + 1, osa.OP_OFF, 3)))                     # 2 wrong meter
    res.append(ask(command(KEYS, METER, osa.OP_ON, 4)))                          # 5 spacing
    after(6)
    res.append(ask(command(KEYS, METER, osa.OP_ON, 5)))                          # 0 armed
    wait_polls()
    pins["button"].v = 1
    wait_polls()
    pins["button"].v = 0
    wait_polls()
    closed = pins["relay"].v
    after(6)
    res.append(ask(command(KEYS, METER, osa.OP_OFF, 6)))                         # 0
    after(6)
    res.append(ask(command(KEYS, METER, osa.OP_ON, 7)))                          # 0 armed
    after(6)
    res.append(ask(command(KEYS, METER, osa.OP_OFF, 8)))                         # 5 4/h
    after(31)
    wait_polls()                                                                 # window over
    armed_after_window = core.armed
    pins["tamper"].v = 1
    wait_polls()
    res.append(ask(command(KEYS, METER, osa.OP_ON, 9)))                          # 6 locked
    res.append(ask(command(KEYS, METER, osa.OP_UNLOCK, 10)))                     # 7 tamper on
    pins["tamper"].v = 0
    wait_polls()
    res.append(ask(command(KEYS, METER, osa.OP_UNLOCK, 11)))                     # 0 unlocked
    res.append(ask(b"12345678", "switch_status"))                                # 0 status
    res.append(ask(command(KEYS, METER, 9, 12)))                                 # 8 unknown op
    for i in range(40):                                                          # past the cap
        ask(command(KEYS, METER, osa.OP_OFF, 1))
    after(3600)
    res.append(ask(command(KEYS, METER, osa.OP_ON, 13)))                         # 0 armed
    wait_polls()
    pins["button"].v = 1
    wait_polls()
    pins["button"].v = 0
    wait_polls()
    after(11)
    put("credit_disconnect", 0, None)
    wait_polls()
    wait_polls()
    credit_open = pins["relay"].v == 0
    after(6)
    res.append(ask(command(KEYS, METER, osa.OP_ON, 14)))                         # 0 armed
    pins["tamper"].v = 1
    wait_polls()
    pins["tamper"].v = 0
    wait_polls()
    link.running = False
    time.sleep_ms(150)
    drain()
    big = [n for n in dir(core) if isinstance(getattr(core, n), int)
           and not -(1 << 30) <= getattr(core, n) < (1 << 30)]
    out(res=res, closed=closed, armed_after_window=armed_after_window,
        credit_open=credit_open, end=result.get("end"), big=big, locked=core.locked,
        ctr=core.ctr, wrapped=core._clock < 10000000)

_thread.stack_size(16384)
"""


def run_session(micropython: Run, tmp_path: Path, guard: str) -> dict[str, Any]:
    return run_core(micropython, tmp_path, SESSION + guard + """
_thread.start_new_thread(core1, ())
time.sleep_ms(50)
session()
""", relay=1)


def check_session(r: dict[str, Any]) -> None:
    assert r["res"] == [OK, 3, 4, 1, 2, 5, OK, OK, OK, 5, 6, 7, OK, OK, 8, OK, OK], r["res"]
    assert r["closed"] == 1 and r["armed_after_window"] == 0 and r["credit_open"], r["logs"][-8:]
    assert r["locked"] == 1 and r["ctr"] == 14 and r["wrapped"]
    assert r["big"] == []  # every int core 1 keeps is a small int on a 32-bit port too
    logs = r["logs"]
    assert not any(line.startswith("error") for line in logs), logs
    for line in ("OFF #1: relay opened", "OFF #2 refused: bad MAC", "OFF #1 refused: replay",
                 "ON #4: refused: rate limit: spacing", "ON #5: armed 30s: press button",
                 "button: reconnect confirmed, relay closed", "OFF #8: refused: rate limit: 4/h",
                 "arm window over: relay stays open", "TAMPER: locked (relay was open)",
                 "ON #9: refused: locked", "UNLOCK #10: refused: tamper active",
                 "UNLOCK #11: unlocked", "op9 #12: refused: unknown op",
                 "credit: local disconnect, relay opened", "TAMPER: locked (relay was open)",
                 "ON #14: armed 30s: press button", "tamper input cleared"):
        assert line in logs, (line, logs)
    assert "OFF #3 refused: for meter 4243" in logs
    assert any(line.endswith("more refusals (log cap)") for line in logs), logs


def test_core1_allocates_nothing_with_the_heap_locked(micropython: Run, tmp_path: Path) -> None:
    """The loop runs with micropython.heap_lock() held on its thread from start to end: any
    allocation raises MemoryError there, which the loop logs as "error: MemoryError"."""
    r = run_session(micropython, tmp_path, """
import micropython
def GUARD_SETUP():
    micropython.heap_lock()
def GUARD_END():
    try:
        bytearray(16)
        still = False
    except MemoryError:
        still = True
    micropython.heap_unlock()
    return still
""")
    check_session(r)
    assert r["end"] is True  # the heap was still locked when the loop ended


def test_core1_touches_no_file_and_imports_nothing(micropython: Run, tmp_path: Path) -> None:
    """After the start, the filesystem (every path, through a VFS mounted over /) and
    __import__ raise on core 1's thread and count; the main thread goes on using them."""
    r = run_session(micropython, tmp_path, """
import os, builtins
seen = []
C1 = [None]
real = os.VfsPosix()
def trap(what):
    if _thread.get_ident() == C1[0]:
        seen.append(what)
        raise OSError(5)
class Trap:
    def mount(self, ro, mkfs): pass
    def umount(self): pass
    def open(self, p, m): trap("open"); return real.open(p, m)
    def stat(self, p): trap("stat"); return real.stat(p)
    def ilistdir(self, p): trap("ilistdir"); return real.ilistdir(p)
    def mkdir(self, p): trap("mkdir"); return real.mkdir(p)
    def remove(self, p): trap("remove"); return real.remove(p)
    def rename(self, a, b): trap("rename"); return real.rename(a, b)
    def rmdir(self, p): trap("rmdir"); return real.rmdir(p)
    def chdir(self, p): trap("chdir"); return real.chdir(p)
    def getcwd(self): trap("getcwd"); return real.getcwd()
    def statvfs(self, p): trap("statvfs"); return real.statvfs(p)
real_import = builtins.__import__
def guarded_import(*a):
    trap("import " + a[0])
    return real_import(*a)
def GUARD_SETUP():
    C1[0] = _thread.get_ident()
def GUARD_END():
    C1[0] = None
    return seen
os.umount("/")
os.mount(Trap(), "/")
builtins.__import__ = guarded_import
""")
    check_session(r)
    assert r["end"] == []


@pytest.mark.parametrize(("fault", "seen"), [
    ("bytearray(4)", "error: MemoryError"),
    ("open(D + '/x', 'w')", "error: OSError"),
    ("import json", "error: OSError"),
])
def test_the_guards_catch_a_core_that_allocates_opens_or_imports(
        micropython: Run, tmp_path: Path, fault: str, seen: str) -> None:
    """The two tests above, against a Core whose pass does one forbidden thing: each is seen."""
    guards = {"alloc": "import micropython\n"
                       "def GUARD_SETUP():\n    micropython.heap_lock()\n"
                       "def GUARD_END():\n    micropython.heap_unlock()\n    return []\n"}
    src = (fs_guard_source() if "bytearray" not in fault else guards["alloc"])
    r = run_core(micropython, tmp_path, SESSION.replace(
        "core = offswitch.Core(", f"""FAULT = [1]
class Faulty(offswitch.Core):
    def poll(self):
        if FAULT[0]:
            FAULT[0] = 0
            {fault}
        offswitch.Core.poll(self)
core = Faulty(""") + src + """
_thread.start_new_thread(core1, ())
time.sleep_ms(100)
link.running = False
time.sleep_ms(150)
drain()
out(end=result.get("end"))
""")
    assert seen in r["logs"], r["logs"]


def fs_guard_source() -> str:
    body = inspect.getsource(test_core1_touches_no_file_and_imports_nothing)
    return body[body.index('"""\nimport os') + 4:body.index('""")\n    check_session')]


# -- without _thread (the official PYBV11 build): the same Core, one pass per kernel step ------
COOPERATIVE = """
import builtins, json, time
real_import = builtins.__import__
def no_thread(name, *a):
    if name == "_thread":
        raise ImportError("no module named '_thread'")
    return real_import(name, *a)
builtins.__import__ = no_thread          # as on the standard PYBV11 build
import kernel, policy, store
import offswitch_auth as osa
from tasks import offswitch
D = {d!r}
KEY = bytes(range(32))
METER = 4242
store.save(D + "/keys.json", {{"meter": METER, "key": KEY.hex(), "max_per_hour": 4,
                              "min_spacing_s": 5, "arm_window_s": 30}})
KEYS = osa.derive(KEY, METER)
import struct
from hmac_sha256 import hmac_sha256_pads

def command(op, ctr, keys=KEYS):
    head = struct.pack(">BBQI", 1, op, METER, ctr)
    return head + hmac_sha256_pads(keys[0], head)[:16]

class Pin:
    def __init__(self, v=0):
        self.v = v
    def value(self, v=None):
        if v is None:
            return self.v
        self.v = 1 if v else 0

class Boot:
    def __init__(self):
        self.saved = []
    def save(self, v):
        self.saved.append(v)

class T:
    def __init__(self, port, hw):
        self.port = port
        self.got = []
    def handle(self, sender, kind, payload):
        self.got.append((sender, kind, payload))

LOGS = {{n: (D + "/" + n + ".bin", 64, 64) for n in policy.LOGS}}
k = kernel.Kernel(policy.FLOWS, policy.LOG_OF, LOGS, lambda: 1000)
tasks = {{n: k.add(n, T, {{}}, capacity=8) for n in ("cs_security", "credit", "han")}}
clock = [0]
pins = {{"relay": Pin(1), "button": Pin(), "tamper": Pin(), "sleep_ms": time.sleep_ms}}
boot = Boot()
mode = offswitch.install(k, pins, boot, D + "/keys.json", D + "/state.json", lambda: clock[0])

def run(ms=60):
    t = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t) < ms:
        k.run_once()
        time.sleep_ms(1)

def switch(token, ref):
    tasks["cs_security"].port.send("offswitch", "switch", (ref, token))
    run()
    for s, kind, p in tasks["cs_security"].got:
        if kind == "switch_done" and p[0] == ref:
            rep = p[2]
            if hmac_sha256_pads(KEYS[1], rep[:28])[:16] != rep[28:]:
                return "unsigned"
            return rep[2]

def press(name):
    pins[name].v = 1
    run()
    pins[name].v = 0
    run()
"""


def test_without_thread_the_offswitch_runs_cooperatively(micropython: Run,
                                                         tmp_path: Path) -> None:
    out = micropython(COOPERATIVE.format(d=str(tmp_path)) + """
run()
res = [switch(command(osa.OP_OFF, 1), 1)]
opened = pins["relay"].v
after_off = store.load_bytes(D + "/state.json")
res.append(switch(command(osa.OP_OFF, 2, osa.derive(bytes(32), METER)), 2))   # forged
res.append(switch(command(osa.OP_OFF, 1), 3))                                # replayed
clock[0] += 6000
res.append(switch(command(osa.OP_ON, 3), 4))
armed_open = pins["relay"].v
press("button")
closed = pins["relay"].v
clock[0] += 6000
tasks["credit"].port.send("offswitch", "credit_disconnect", None)
run()
credit_open = pins["relay"].v
forbidden = tasks["han"].port.send("offswitch", "switch", (9, command(osa.OP_ON, 4)))
press("tamper")
res.append(switch(command(osa.OP_ON, 5), 5))                                 # locked
states = [list(p) for s, kind, p in tasks["han"].got if kind == "relay_state"]
print(json.dumps({"mode": mode, "res": res, "opened": opened, "armed_open": armed_open,
    "closed": closed, "credit_open": credit_open, "forbidden": forbidden,
    "sealed": osa.state_fields(after_off), "boot": boot.saved, "states": states,
    "log": [r[2] for r in k.read_log("offswitch", 0, 100)],
    "sec": [r[2] for r in k.read_log("security", 0, 100)]}))
""")
    r = json.loads(out.strip().splitlines()[-1])
    assert r["mode"] == "cooperative"
    assert r["res"] == [OK, 3, 4, OK, 6]  # ok, bad MAC, replay, armed, locked: all signed
    assert r["opened"] == 0 and r["armed_open"] == 0 and r["closed"] == 1
    assert r["credit_open"] == 0
    assert r["forbidden"] is False  # the flow policy still decides who reaches it
    assert any("policy refused han->offswitch switch" in t for t in r["sec"]), r["sec"]
    # its record: sealed, stored before the pin moved, with the relay's boot state
    assert r["sealed"]["relay"] == 0 and r["sealed"]["ctr"] == 1
    assert r["boot"][:1] == [0] and 1 in r["boot"]
    assert r["states"][0] == [1, 0, 0] and r["states"][-1] == [0, 0, 1]
    log = r["log"]
    assert log[0] == "no _thread: runs in the main loop (cooperative)"
    for line in ("OFF #1: relay opened", "OFF #2 refused: bad MAC", "OFF #1 refused: replay",
                 "ON #3: armed 30s: press button", "button: reconnect confirmed, relay closed",
                 "credit: local disconnect, relay opened", "TAMPER: locked (relay was open)",
                 "ON #5: refused: locked"):
        assert line in log, (line, log)


def test_a_factory_limit_above_what_is_kept_boots_and_is_no_hourly_limit(
        micropython: Run, tmp_path: Path) -> None:
    # The power-cut campaign provisions 100000 an hour: the Core's memory stays bounded (a list
    # of 100000 times would not fit the heap) and the hourly limit is off; spacing still holds.
    r = run_core(micropython, tmp_path, """
store.save(D + "/big.json", {"meter": METER, "key": KEY.hex(), "max_per_hour": 100000,
                             "min_spacing_s": 1, "arm_window_s": 30})
boot(D + "/big.json")
res = []
for i in range(1, 81):
    after(1)
    res.append(cmd(osa.OP_OFF if i % 2 else osa.OP_ON, i)[1])
spacing = cmd(osa.OP_OFF, 81)[1]
out(kept=len(core._ops), res=sorted(set(res)), spacing=spacing)
""")
    assert r["kept"] == 64 and r["res"] == [OK] and r["spacing"] == 5


def test_the_allocation_free_hmac_is_hmac_sha256(micropython: Run) -> None:
    """offswitch._mac on the viper workspace against hmac_sha256 (hashlib), every length a
    message may have, every key, with the heap locked."""
    out = micropython("""
import os, micropython
import hmac_sha256 as h
from tasks import offswitch
from tasks.offswitch_mac import compile_op, workspace
keys = [os.urandom(32) for _ in range(4)]
op = compile_op()
ws = workspace(keys, op)
bad = 0
for n in range(56):
    for w in range(4):
        msg = os.urandom(n)
        ws[864:864 + n] = msg
        micropython.heap_lock()
        offswitch._mac(op, ws, w, n)
        micropython.heap_unlock()
        bad += bytes(ws[928:960]) != h.hmac_sha256(keys[w], msg)
print(bad)
""")
    assert out.split() == ["0"]


def test_the_copied_constants_agree() -> None:
    # offswitch.py keeps its constants private (not module attributes: RAM); the boot, the
    # requests, the wording and the MAC set-up, loaded only for a moment (the requests for good
    # where core 1 runs them), have copies of those they need
    import re

    def consts(name: str) -> dict[str, int]:
        src = (FIRMWARE / "tasks" / name).read_text()
        return {k: int(v, 0) for k, v in re.findall(r"^(_[A-Z_0-9]+) = const\(([0-9a-fA-Fx]+)\)",
                                                    src, re.M)}

    main = consts("offswitch.py")
    main.update({"_WS_K": 0, "_WS_H": 512, "_WS_SIZE": 960, "_NKEYS": 4})  # (in its comment)
    for other in ("offswitch_boot.py", "offswitch_cmd.py", "offswitch_text.py",
                  "offswitch_mac.py"):
        copies = consts(other)
        shared = {k: v for k, v in copies.items() if k in main}
        assert shared == {k: main[k] for k in shared}, other
        assert len(shared) >= 4, other
    events = {k for k in main if k.startswith("_EV_")} - {"_EV_N", "_EV_SIZE", "_EV_HEAD"}
    assert set(consts("offswitch_text.py")) - {"_R_WRONG_METER"} == events
    # ... and offswitch.py has the wire's constants of lib/offswitch_auth.py as its own (that
    # module is not in RAM while the meter runs): each the same value
    wire_src = (FIRMWARE / "lib" / "offswitch_auth.py").read_text()
    wire_consts = {k: int(v, 0) for k, v in re.findall(r"^([A-Z_0-9]+) = const\(([0-9]+)\)",
                                                       wire_src, re.M)}
    used = {k[1:]: v for k, v in main.items() if k[1:] in wire_consts}
    assert len(used) >= 20 and used == {k: wire_consts[k] for k in used}
    text = {k: v for k, v in consts("offswitch_text.py").items() if k[1:] in wire_consts}
    assert text == {"_R_WRONG_METER": wire_consts["R_WRONG_METER"]}
    import ast

    def tuples(src: str) -> dict[str, object]:
        return {t.id: ast.literal_eval(n.value) for n in ast.parse(src).body
                if isinstance(n, ast.Assign) and isinstance(n.value, ast.Tuple)
                for t in n.targets if isinstance(t, ast.Name)}

    wire_names = tuples(wire_src)
    text_names = tuples((FIRMWARE / "tasks" / "offswitch_text.py").read_text())
    assert text_names["_OP_NAMES"] == wire_names["OP_NAMES"]
    assert text_names["_RESULT_NAMES"] == wire_names["RESULT_NAMES"]


def test_a_record_the_main_core_edited_brings_the_offswitch_up_locked(
        micropython: Run, tmp_path: Path) -> None:
    """The main core stores core 1's record as handed; one it edits (here: unlocked, armed,
    the counter back to 0, the MAC kept) is not sealed by core 1 and is not believed."""
    r = run_core(micropython, tmp_path, """
pins["tamper"].v = 1
poll(3)
pins["tamper"].v = 0
poll(3)
cmd(osa.OP_OFF, 7)
rec = bytearray(store.load_bytes(D + "/state.json"))
sealed = osa.state_fields(rec)
rec[2], rec[3] = 1, 0                      # armed, not locked
rec[4:8] = bytes(4)                        # counter 0: the old commands would replay
store.save_bytes(D + "/state.json", bytes(rec))
boot()
replay = cmd(osa.OP_ON, 7)[1]
out(sealed=[sealed["locked"], sealed["ctr"]], after=[core.armed, core.locked], replay=replay)
""")
    assert r["sealed"] == [1, 7]
    assert r["after"] == [0, 1]  # not armed; locked
    assert r["replay"] == 6  # ON refused: locked
    assert "state record not authentic: locked" in r["logs"]


def test_with_the_main_core_hung_nothing_moves_but_tamper_opens_and_locks(
        micropython: Run, tmp_path: Path) -> None:
    """Core 0 stops storing (hung): an authentic OFF waits, unanswered, the relay unmoved;
    tamper still opens the relay and locks at once. When core 0 comes back, the OFF is
    answered and the tamper lock is stored."""
    r = run_core(micropython, tmp_path, """
def take_answers():
    out = []
    while True:
        d = link.take_done()
        if d is None:
            return out
        out.append(d)
put("switch", 1, command(KEYS, METER, osa.OP_OFF, 1))
for _ in range(20):
    core.poll()                      # core 0 hung: nobody stores, nobody drains
hung = [pins["relay"].v, link.persist_wanted(), len(take_answers())]
pins["tamper"].v = 1
core.poll()
tamper = [pins["relay"].v, core.locked]
for _ in range(5):
    poll()                           # core 0 back
rec = osa.state_fields(store.load_bytes(D + "/state.json"))
out(hung=hung, tamper=tamper, stored=[rec["relay"], rec["locked"], rec["ctr"]],
    wanted=link.persist_wanted())
""")
    assert r["hung"] == [1, True, 0]  # not moved, waiting, no answer
    assert r["tamper"] == [0, 1]  # opened and locked without the main core
    assert r["stored"] == [0, 1, 1] and r["wanted"] is False
    assert "TAMPER: relay opened, locked" in r["logs"] and "OFF #1: relay opened" in r["logs"]


def test_a_record_the_main_core_could_not_store_moves_nothing(micropython: Run,
                                                               tmp_path: Path) -> None:
    r = run_core(micropython, tmp_path, """
put("switch", 1, command(KEYS, METER, osa.OP_OFF, 1))
core.poll()
link.persisted(False)                # the flash failed
answers = [p for k, p in poll(2) if k == "done"]
res = open_reply(KEYS, METER, answers[0][2])[1]
again = cmd(osa.OP_OFF, 1)          # its counter was consumed all the same
out(res=res, again=again[1], state=[core.relay, core.ctr])
""")
    assert r["res"] == 10 and r["relay"] == 1  # BUSY, not moved
    assert r["again"] == 4 and r["state"] == [1, 1]  # replay
    assert "OFF #1: refused: persist failed" in r["logs"]
