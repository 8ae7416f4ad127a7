# The off-switch's log events in words, on the main core (core 1 only fills event slots:
# tasks/offswitch.py). In its own file so that its code is in RAM only while it runs
# (lib/lazy.py). Part of that module.
from micropython import const

# lib/offswitch_auth.py's names, copied: that module (4 KB of heap) is not loaded for the
# wording (tests_host/test_offswitch.py checks the copies)
_OP_NAMES = ("STATUS", "OFF", "ON", "UNLOCK")
_RESULT_NAMES = ("ok", "malformed", "wrong meter", "bad MAC", "replay", "rate limit", "locked",
                 "tamper active", "unknown op", "no key", "busy")
_R_WRONG_METER = const(2)

# the event codes, as tasks/offswitch.py's (tests_host/test_offswitch.py checks the copies)
_EV_BOOT = const(1)
_EV_NEW_KEY = const(2)
_EV_BOOT_PIN = const(3)
_EV_CAP = const(4)
_EV_TAMPER_CLEARED = const(5)
_EV_BUTTON = const(6)
_EV_WINDOW = const(7)
_EV_CREDIT_REFUSED = const(8)
_EV_CREDIT = const(9)
_EV_PERSIST_FAILED = const(10)
_EV_TAMPER = const(11)
_EV_NO_KEY = const(12)
_EV_REFUSED = const(13)
_EV_COMMAND = const(14)
_EV_ERROR = const(15)
_EV_BAD_RECORD = const(16)

# command outcomes, by tasks.offswitch T_* (%d: the event's number)
OUTCOMES = ("relay opened", "already open", "already closed", "armed %ds: press button",
            "unlocked", "not locked", "refused: locked", "refused: rate limit: %d/h",
            "refused: rate limit: spacing", "refused: tamper active", "refused: unknown op",
            "refused: persist failed")
TAMPER = ("TAMPER: relay opened, locked", "TAMPER: locked (relay was open)",
          "TAMPER: again (already locked)")


def _outcome(t, n):
    s = OUTCOMES[t] if t < len(OUTCOMES) else "outcome %d" % t
    return s % n if "%d" in s else s


def words_all(evs):
    return [words(ev, obj) for ev, obj in evs]


def words(ev, obj):
    code, a, b, c = ev[0], ev[1], ev[2], ev[3]
    ctr = int.from_bytes(ev[4:8], "big")
    n = int.from_bytes(ev[13:16], "big")
    name = _OP_NAMES[a] if 0 < a < 4 else "op%d" % a
    if code == _EV_COMMAND:
        return "%s #%d: %s" % (name, ctr, _outcome(b, n))
    if code == _EV_REFUSED:
        if b == _R_WRONG_METER:
            why = "for meter %d" % int.from_bytes(ev[8:16], "big")
        else:
            why = _RESULT_NAMES[b] if b < len(_RESULT_NAMES) else "result %d" % b
        return "%s #%d refused: %s" % (name, ctr, why)
    if code == _EV_BOOT:
        return "boot: relay %d armed %d locked %d ctr %d" % (a, b, c, ctr)
    if code == _EV_BOOT_PIN:
        return "boot: relay pin %d set to %d" % (a, b)
    if code == _EV_TAMPER:
        return TAMPER[a] if a < 3 else "TAMPER"
    if code == _EV_CREDIT_REFUSED:
        return "credit disconnect refused: " + _outcome(a, n)[len("refused: "):]
    if code == _EV_CAP:
        return "%d more refusals (log cap)" % n
    if code == _EV_PERSIST_FAILED:
        return "persist failed: relay stays %d" % a
    if code == _EV_ERROR:
        return "error: %s" % (obj.__name__ if obj is not None else "?")
    return {_EV_NEW_KEY: "new key: counter reset", _EV_TAMPER_CLEARED: "tamper input cleared",
            _EV_BUTTON: "button: reconnect confirmed, relay closed",
            _EV_WINDOW: "arm window over: relay stays open",
            _EV_CREDIT: "credit: local disconnect, relay opened",
            _EV_NO_KEY: "command refused: no key",
            _EV_BAD_RECORD: "state record not authentic: locked"}.get(code, "event %d" % code)
