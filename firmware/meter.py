# The meter: the kernel and its tasks, built on the board. Each task gets a
# port to the kernel and only the board objects that policy.HARDWARE grants.
import gc
import sys

import board
import kernel  # noqa: F401 - made by grants.py; imported here, early and low in the heap
import lazy

VERSION = "0.2.0"


def profile_ring():
    """The load profile as metrology keeps it (a file, or the RAM and its snapshots): for a
    probe over the REPL (lab truth, host_tools/headend/lopa/lab.py), never the WAN."""
    return lazy.call("grants", "profile_ring")


_TASKS = ("metrology", "offswitch", "dc_security", "clock", "cs_security", "comm", "status",
          "credit", "han")


def build(now_s=None, unsealed_by_service=False):
    # Unless frozen into flash, the modules' code lives in the heap, among the garbage its
    # loading left: collect it before the tasks make their long-lived objects, so that they
    # fill the holes and leave large free blocks for run time (without this, a 192-KB heap
    # ends up in holes too small for a 1-KB WAN frame).
    gc.collect()
    # The off-switch's allocation-free HMAC is viper code compiled on the board
    # (tasks/offswitch_mac.py): compiled first, while the heap is nearly empty (on a 100-KB
    # Pyboard heap its compiler's peak does not fit later).
    mac_op = lazy.call("tasks.offswitch_mac", "compile_op")
    # Every task's grants (policy.HARDWARE, the board's objects), then the kernel, which
    # takes private copies of the flow and log tables: grants.py reads policy.py and both are
    # dropped before any task is made, so that their code and tables (~7 KB) are not in the
    # heap at the build's peak (docs/hardware.md, "Memory").
    k, hws = lazy.call("grants", "make", now_s or board.rtc.get, _TASKS)
    gc.collect()
    # (each task's grants leave hws as it is made: what the task keeps of them stays, the
    # rest is garbage before the next task is made)
    # Each task's module is imported just before the task is made (the main.py boot collects
    # after each import, lib/lazy.py), in this order: the code that is in RAM only while a
    # task is made (the off-switch's boot, tasks/offswitch_boot.py, ~9 KB; LoPA's group
    # loading, tasks/dc_rare.py; the logs' scan) then finds the heap with the least of the
    # rest in it, not at the build's end (on the 100-KB Pyboard heap it fits only so).
    # Metrology first and realtime: its step also runs between any two messages.
    from tasks.metrology import Metrology

    # Every 100 ms: each read of the ADC ring has a fixed cost (tasks/metrology.py, BUF)
    k.add("metrology", Metrology, hws.pop("metrology"), capacity=8, period_ms=100, realtime=True)
    # The off-switch: core 1 where `import _thread` works; where it does not (the official
    # PYBV11 build) its pass runs in its proxy's step on this core (docs/OFFSWITCH.md,
    # "Without _thread"). The proxy stores core 1's record for it, and the relay's boot state
    # where the board keeps one (a RelayBoot: the file's path, not the pin).
    from tasks import offswitch

    hw = hws.pop("offswitch")
    hw["sleep_ms"] = board.sleep_ms
    hw["mac_op"] = mac_op
    offswitch.install(k, hw, getattr(board.relay, "boot", None))
    del offswitch
    # LoPA: its step() does one unit of queued work (one X25519, or a slice of a blinding).
    from tasks.dc_security import DcSecurity

    k.add("dc_security", DcSecurity, hws.pop("dc_security"), capacity=8, period_ms=5)
    from tasks.clock import Clock

    k.add("clock", Clock, hws.pop("clock"), capacity=4, period_ms=100)
    from tasks.cs_security import CsSecurity

    hw = hws.pop("cs_security")
    hw["info"] = {"fw": VERSION, "board": board.NAME}
    k.add("cs_security", CsSecurity, hw, capacity=16)
    from tasks.comm import Comm

    k.add("comm", Comm, hws.pop("comm"), capacity=16, period_ms=10)
    from tasks.status import Status

    k.add("status", Status, hws.pop("status"), capacity=1, period_ms=Status.PERIOD_MS)
    # Prepaid credit and the HAN data diode
    from tasks.credit import Credit

    k.add("credit", Credit, hws.pop("credit"), capacity=8)
    from tasks.han import Han

    hw = hws.pop("han")
    hw["unsealed_by_service"] = unsealed_by_service  # shown in its telegram (tasks/han.py)
    k.add("han", Han, hw, capacity=4)
    gc.collect()
    return k


def start(sealed=False):
    # sealed: main.py found the seal and turned Ctrl-C off (lib/seal.py). Returns the kernel,
    # for main.py to run (seal.run); this module is not needed after it.
    print("meter firmware %s on board %s (%s %s)%s" % (
        VERSION, board.NAME, sys.implementation.name,
        ".".join(str(v) for v in sys.implementation.version[:3]), " sealed" if sealed else ""))
    # The inputs at power-up (the service input, the household's consent): grants.py, whose
    # code is not in RAM while the tasks are made
    by_service, consent_now = lazy.call("grants", "power_up", sealed)
    k = build(unsealed_by_service=by_service is True)
    if isinstance(consent_now, str):
        k.log("kernel", "consent: %s (button held at power-up)" % consent_now)
    elif consent_now is not None:
        k.log("kernel", "consent: change failed %s" % consent_now)
    if by_service is True:
        k.log("kernel", "seal: unsealed (service input at power-up)")
    elif by_service:
        k.log("kernel", "seal: service input, unseal failed %s" % by_service)
    return k
