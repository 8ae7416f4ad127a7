# The meter's grants (meter.py build): what policy.py lets each task use of the board, the
# battery-backed RAM's records and windows, and the kernel made with the policy's tables. Run
# once at boot, before any task is made; this module and policy.py are then dropped, so that
# neither is in the heap at the build's peak (docs/hardware.md, "Memory"). Part of meter.py.
import sys

import board
import kernel


def hardware(task, policy):
    # The board objects a task may use, by policy.HARDWARE, and nothing else.
    hw = {}
    for name in policy.hardware_of(task):
        if name == "adc":
            hw["adc"] = board.adc
            hw["adc_rate_hz"] = board.ADC_RATE_HZ
            hw["cal_default"] = board.CAL_DEFAULT
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
