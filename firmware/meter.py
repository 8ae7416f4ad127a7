# The meter: the kernel and its tasks, built on the board. Each task gets a
# port to the kernel and only the board objects that policy.HARDWARE grants.
import gc
import sys

import board
import kernel
import lazy
from tasks.clock import Clock
from tasks.comm import Comm
from tasks.cs_security import CsSecurity
from tasks.dc_security import DcSecurity
from tasks.metrology import Metrology
from tasks.status import Status

VERSION = "0.2.0"


def hardware(task):
    # The board objects a task may use, by policy.HARDWARE, and nothing else.
    import policy

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


def profile_ring():
    """The load profile as metrology keeps it (a file, or the RAM and its snapshots): for a
    probe over the REPL (lab truth, host_tools/headend/lopa/lab.py), never the WAN."""
    from ringlog import Ring
    from tasks.metrology import PROFILE, PROFILE_CAP, PROFILE_REC

    nv = getattr(board, "nvram", None)
    snapshots(nv)
    return Ring(PROFILE, PROFILE_CAP, PROFILE_REC, stage(nv, PROFILE) if nv is not None else None)


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


def build(now_s=None):
    # Unless frozen into flash, the modules' code lives in the heap, among the garbage its
    # loading left: collect it before the tasks make their long-lived objects, so that they
    # fill the holes and leave large free blocks for run time (without this, a 192-KB heap
    # ends up in holes too small for a 1-KB WAN frame).
    gc.collect()
    # The off-switch's allocation-free HMAC is viper code compiled on the board
    # (tasks/offswitch_mac.py): compiled first, while the heap is nearly empty (on a 100-KB
    # Pyboard heap its compiler's peak does not fit later).
    mac_op = lazy.call("tasks.offswitch_mac", "compile_op")
    snapshots(getattr(board, "nvram", None))
    import policy

    # 9 tasks, 69 messages in their mailboxes (the capacities below): the kernel's tables are
    # made once, whole
    k = kernel.Kernel(policy.FLOWS, policy.LOG_OF, logs_of(getattr(board, "nvram", None),
                                                           policy.LOGS),
                      now_s or board.rtc.get,
                      board.sleep_ms, size=(9, 69))
    # Metrology first and realtime: its step also runs between any two messages.
    k.add("metrology", Metrology, hardware("metrology"), capacity=8, period_ms=20, realtime=True)
    k.add("clock", Clock, hardware("clock"), capacity=4, period_ms=100)
    info = {"fw": VERSION, "board": board.NAME}
    hw = hardware("cs_security")
    hw["info"] = info
    k.add("cs_security", CsSecurity, hw, capacity=16)
    # LoPA: its step() does one unit of queued work (one X25519, or a slice of a blinding).
    k.add("dc_security", DcSecurity, hardware("dc_security"), capacity=8, period_ms=5)
    k.add("comm", Comm, hardware("comm"), capacity=16, period_ms=10)
    k.add("status", Status, hardware("status"), capacity=1, period_ms=250)
    # Prepaid credit, the HAN data diode, and the off-switch on core 1 (tasks/offswitch.py):
    # core 1 gets the relay, button and tamper; the main core only a proxy holding the Link.
    # Imported here, after the tasks above have made their large allocations (a fragmented
    # heap has no room for them afterwards).
    from tasks import offswitch
    from tasks.credit import Credit
    from tasks.han import Han

    k.add("credit", Credit, hardware("credit"), capacity=8)
    k.add("han", Han, hardware("han"), capacity=4)
    # The off-switch: core 1 where `import _thread` works; where it does not (the official
    # PYBV11 build) its pass runs in its proxy's step on this core (docs/OFFSWITCH.md,
    # "Without _thread"). The proxy stores core 1's record for it, and the relay's boot state
    # where the board keeps one (a RelayBoot: the file's path, not the pin).
    hw = hardware("offswitch")
    hw["sleep_ms"] = board.sleep_ms
    hw["mac_op"] = mac_op
    offswitch.install(k, hw, getattr(board.relay, "boot", None))
    # The kernel took private copies of policy.py's tables: the module is not needed any
    # more, and its tables and code would hold RAM for nothing (docs/hardware.md, "Memory").
    sys.modules.pop("policy", None)
    gc.collect()
    return k


def _button_held(button, ticks_us, ticks_diff, sleep_ms, hold_ms=3000):
    # True when the button reads pressed without a break for hold_ms from now (3 s: a
    # technician on site unseals by holding it at power-up, lib/seal.py).
    t0 = ticks_us()
    while ticks_diff(ticks_us(), t0) < hold_ms * 1000:
        if not button.value():
            return False
        sleep_ms(20)
    return bool(button.value())


def start(sealed=False):
    # sealed: main.py found the seal and turned Ctrl-C off (lib/seal.py). Returns the kernel,
    # for main.py to run (seal.run); this module is not needed after it.
    print("meter firmware %s on board %s (%s %s)%s" % (
        VERSION, board.NAME, sys.implementation.name,
        ".".join(str(v) for v in sys.implementation.version[:3]), " sealed" if sealed else ""))
    try:
        import os

        os.mkdir("/data")
    except OSError:
        pass
    import seal

    by_button = False
    if sealed:
        # A technician on site: the local button held at power-up unseals (before core 1
        # takes the button; the off-switch does not count a button held at boot as a press).
        if _button_held(board.button, board.ticks_us, board.ticks_diff, board.sleep_ms):
            lazy.call("kernel_svc", "set_sealed", False)
            by_button = True
            print("unsealed: the button was held at power-up")
    k = build()
    if by_button:
        k.log("kernel", "seal: unsealed (button held at power-up)")
    return k

