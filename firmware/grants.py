# The meter's boot before its tasks are made (meter.py start and build): the service input
# and the household's consent at power-up, what policy.py lets each task use of the board
# (its grants), the battery-backed RAM's records and windows, and the kernel made with the
# policy's tables. Run once at boot, before any task is made; this module and policy.py are
# then dropped, so that neither is in the heap at the build's peak (docs/hardware.md,
# "Memory"). Part of meter.py.
import sys

import board
import kernel
import lazy


def hardware(task, policy):
    # The board objects a task may use, by policy.HARDWARE, and nothing else.
    hw = {}
    for name in policy.hardware_of(task):
        if name == "adc":
            hw["adc"] = board.adc
            hw["adc_rate_hz"] = board.ADC_RATE_HZ
            hw["cal_default"] = board.CAL_DEFAULT
            # samples per channel per read, where a board's heap wants fewer (tasks/metrology.py)
            hw["adc_read_max"] = getattr(board, "ADC_READ_MAX", 0)
        elif name == "wan":
            hw["wan"] = board.wan()
        elif name == "han_tx":
            hw["han_tx"] = board.han_tx()
        elif name == "entropy":
            hw["entropy"] = board.entropy
        elif name == "nvram":
            # a record in its own window of the battery-backed RAM, if the board has one (a
            # Pico has not)
            nv = getattr(board, "nvram", None)
            if nv is not None:
                from nvrec import Record

                rec = hw["nvram"] = Record(nv, *policy.NVRAM[task])
                rec.snaps = _snaps
                if task == "metrology":
                    hw["profile_stage"] = stage(nv, "/data/profile.bin")
        else:
            hw[name] = getattr(board, name)
    return hw


_snaps = None  # the battery-backed RAM's Snapshots on flash (lib/nvrec.py), if the board has it


def snapshots(nv):
    # At power-up, before any task reads the RAM: a RAM that lost its contents (a flat
    # battery) gets the newest snapshot back.
    global _snaps
    if nv is not None and _snaps is None:
        import policy
        from nvrec import Record, Snapshots

        path, count = policy.NVRAM_SNAPSHOTS
        _snaps = Snapshots(nv, path, count, Record(nv, *policy.NVRAM["snapshots"]))
        if _snaps.boot():
            print("nvram: restored from snapshot %d (the battery-backed RAM was lost)"
                  % _snaps.restored)
    return _snaps


def stage(nv, path):
    # the window of battery-backed RAM where ring `path` stages its records (policy.NVRAM_RINGS)
    import policy
    from nvrec import Window

    return Window(nv, *policy.NVRAM_RINGS[path], _snaps)


def logs_of(nv, logs):
    # policy.LOGS, with the RAM window of each log that stages in battery-backed RAM
    import policy

    out = {}
    for name in logs:
        spec = logs[name]
        if nv is not None and spec[0] in policy.NVRAM_RINGS:
            spec = spec + (stage(nv, spec[0]),)
        out[name] = spec
    return out


def profile_ring():
    # meter.profile_ring(): the lab probe's
    from ringlog import Ring
    from tasks.metrology import PROFILE, PROFILE_CAP, PROFILE_REC

    nv = getattr(board, "nvram", None)
    snapshots(nv)
    return Ring(PROFILE, PROFILE_CAP, PROFILE_REC, stage(nv, PROFILE) if nv is not None else None)


def make(now_s, tasks):
    # -> (the kernel, each task's grants by name)
    snapshots(getattr(board, "nvram", None))
    import policy

    hws = {}
    for name in tasks:
        hws[name] = hardware(name, policy)
    # the WAN roles' table (tuples: nothing to alter), kept when policy.py is dropped
    hws["cs_security"]["roles"] = policy.WAN_ROLES
    hws["cs_security"]["consent"] = policy.WAN_CONSENT
    # 9 tasks, 69 messages in their mailboxes (meter.build's capacities): the kernel's tables
    # are made once, whole
    k = kernel.Kernel(policy.FLOWS, policy.LOG_OF, logs_of(getattr(board, "nvram", None),
                                                           policy.LOGS),
                      now_s, board.sleep_ms, size=(9, 69))
    del policy
    sys.modules.pop("policy", None)
    return k, hws


def _service_input(cover, jumper, ticks_us, ticks_diff, sleep_ms, hold_ms=500):
    # The service input behind the sealed terminal cover (docs/SECURITY.md, "Sealed meters"):
    # True when the cover switch reads open AND the service jumper reads fitted, both without a
    # break for hold_ms from now (a bounce or a glitch never unseals). The household's
    # reconnect button is not part of it: it never unseals (power_up() holds the button
    # alone through this for the household's consent, which is not the seal).
    t0 = ticks_us()
    while ticks_diff(ticks_us(), t0) < hold_ms * 1000:
        if not (cover.value() and jumper.value()):
            return False
        sleep_ms(20)
    return bool(cover.value() and jumper.value())


def power_up(sealed):
    # meter.start's inputs at power-up -> (unsealed by the service input: True, an OSError
    # or False; the consent's new state: "on", "off", an OSError or None)
    try:
        import os

        os.mkdir("/data")
    except OSError:
        pass
    by_service = False
    if sealed:
        # A technician on site, with the terminal cover's seal broken: the service input at
        # power-up unseals. A board without it (no cover or jumper pin) cannot be unsealed here.
        cover, jumper = getattr(board, "cover", None), getattr(board, "jumper", None)
        if cover is not None and jumper is not None and _service_input(
                cover, jumper, board.ticks_us, board.ticks_diff, board.sleep_ms):
            try:
                lazy.call("kernel_svc", "set_sealed", False)
                by_service = True
                print("unsealed: the service input (cover open, jumper fitted) at power-up")
            except OSError as e:  # the flash refused: still sealed
                by_service = e
    # The household's consent to the supplier reading the load profile (lib/seal.py,
    # docs/SECURITY.md "Roles on the WAN"): the button held, without a break, for 3 s from
    # power-up toggles it (the same debounced hold as the service input, on one pin; no wait
    # when it is not pressed). Local only: nothing on the WAN reaches a button. Never the seal.
    consent_now = None
    button = getattr(board, "button", None)
    if button is not None and _service_input(button, button, board.ticks_us, board.ticks_diff,
                                             board.sleep_ms, 3000):
        import seal  # main.py's (already imported there, or next)

        try:
            seal.set_consent(not seal.consent_given())
            consent_now = "on" if seal.consent_given() else "off"
            print("consent: %s (the button held at power-up)" % consent_now)
        except OSError as e:  # the flash refused: unchanged
            consent_now = e
    return by_service, consent_now
