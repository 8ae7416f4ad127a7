# The off-switch's boot (tasks/offswitch.py Core): its keys and its persisted state, read once
# on the main core before core 1 starts. In its own file so that its code is in RAM only while
# it runs (lib/lazy.py). Part of that module.
import binascii
import hashlib
import time

import offswitch_auth as osa
import store
from tasks.offswitch import ARM_WINDOW_S, DEBOUNCE, MAX_PER_HOUR, MIN_SPACING_S


def init(core, hw, link, ticks_ms, keys_path, state_path):
    core._relay = hw["relay"]
    core._button = hw["button"]
    core._tamper = hw["tamper"]
    core._link = link
    core._ticks = ticks_ms or time.ticks_ms
    core._path = state_path
    k = store.load(keys_path, None) or {}
    core.meter_id = int(k.get("meter", 0))
    key = bytes.fromhex(k.get("key", ""))
    core._keys = osa.derive(key, core.meter_id) if key else None
    kid = binascii.hexlify(hashlib.sha256(b"os kid" + key).digest()[:8]).decode() \
        if key else ""
    core._max_hour = int(k.get("max_per_hour", MAX_PER_HOUR))
    core._spacing = int(k.get("min_spacing_s", MIN_SPACING_S) * 1000)
    core._window = int(k.get("arm_window_s", ARM_WINDOW_S) * 1000)
    st = store.load(state_path, None)
    pin = core._relay.value()
    # The off-switch's clock: milliseconds powered, persisted with the state and
    # resumed from it, so windows and rate limits survive a reset (time without power
    # does not count: that only makes the limits stricter).
    core._t = core._ticks()
    core._btn = DEBOUNCE if core._button.value() else 0  # held at boot: not a press
    core._tamper_in = 0
    core._ref_n = core._ref_sup = core._ref_win = 0
    if st is None:
        # A new meter: adopt the relay as it is, never move it.
        st = {"relay": pin, "kid": kid}
    core.relay = 1 if st["relay"] else 0
    core.armed = 1 if st.get("armed") else 0
    core.locked = 1 if st.get("locked") else 0
    core.ctr = int(st.get("ctr", 0))
    core.deadline = int(st.get("deadline", 0))
    core._clock = int(st.get("clock", 0))
    core._ops = [int(x) for x in st.get("ops", ())]  # clock times of counted operations
    core._kid = kid
    if st.get("kid", "") != kid:
        # A new key (re-provisioned): counters of the old key mean nothing any more.
        core.ctr = 0
        core._log("new key: counter reset")
    core._log("boot: relay %d armed %d locked %d ctr %d" % (
        core.relay, core.armed, core.locked, core.ctr))
    if pin != core.relay:
        # Only when the pin lost the commanded state (a relay that does not latch).
        core._relay.value(core.relay)
        core._log("boot: relay pin %d set to %d" % (pin, core.relay))
    core._publish()
