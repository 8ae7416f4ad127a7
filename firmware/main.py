# Boot: close the console if the meter is sealed, then start the meter (meter.py builds the
# kernel and its tasks on the board) and run it (seal.run).
#
# Sealed (lib/seal.py), no Ctrl-C may end this file: an uncaught exception here is the REPL.
# The board's pyexec turns Ctrl-C on just before this file's first instruction
# (shared/runtime/pyexec.c, v1.28.0), and a Ctrl-C then only marks a KeyboardInterrupt
# pending; the VM raises it at its next check, which comes only with a jump (py/vm.c, v1.28.0:
# DISPATCH_WITH_PEND_EXC_CHECK after JUMP, POP_JUMP_IF_*, POP_EXCEPT_JUMP, UNWIND_JUMP ...) or
# from Python code a call runs (the virtual board's filesystem is Python, a board's is C).
# So, closing every window (docs/SECURITY.md, "Sealed meters"):
# - Ctrl-C goes off first, on every meter, in straight-line code that runs no Python (the
#   import of `micropython`, a non-extensible built-in found before any filesystem lookup:
#   py/builtinimport.c, v1.28.0; one call): before it no check, after it no new Ctrl-C. At
#   most one KeyboardInterrupt is then pending;
# - the `while` right after it is the VM's first check, inside the try: that one is raised
#   there, and its handler runs with Ctrl-C already off, so no second one can land in it (the
#   window of an earlier main.py: a second Ctrl-C in its except handler, issue 18);
# - only then the seal is read (a filesystem call); unsealed, Ctrl-C goes on again and one that
#   came is honoured, as on any board;
# - sealed, nothing after it may end this file either: every exception is caught, printed, and
#   the board idles (the kernel's main loop goes on instead, lib/seal.py), never the REPL.
_sealed = False
_broke = False
try:
    import micropython

    micropython.kbd_intr(-1)
    while _broke:  # a JUMP: the first check, inside this try
        pass
except KeyboardInterrupt:
    _broke = True
import micropython  # noqa: E402 - bound even if the check above came first (it cannot)
import os  # noqa: E402

try:
    os.stat("/data/sealed")  # lib/seal.py SEALED
    _sealed = True
except OSError:
    micropython.kbd_intr(3)  # unsealed: Ctrl-C as on any board
if _broke and not _sealed:
    raise KeyboardInterrupt
del _broke


def _boot(sealed):
    import gc
    import sys

    # An unsupported MicroPython: one line, and the REPL (docs/hardware.md, "Boards and
    # versions"); a sealed meter's REPL stays closed, so it idles instead
    import port_check

    why = port_check.problem(port_check.identity())
    sys.modules.pop("port_check", None)
    del port_check
    if why:
        print(why)
        if sealed:
            _idle()
        return
    gc.collect()  # this file's compilation left garbage: none of it under the modules' objects
    import lazy

    lazy.compact_imports(True)  # the firmware's objects packed low in the heap (lib/lazy.py)
    import meter  # after the seal check, which must come first
    import seal

    k = meter.start(sealed)
    lazy.compact_imports(False)
    # meter.py only builds the meter: dropped, its code leaves the heap (docs/hardware.md,
    # "Memory")
    del meter
    sys.modules.pop("meter", None)
    # Held by main.py's globals too, which the REPL keeps after a Ctrl-C: what the meter
    # holds can then be read there (tests_device/test_pybv11.py _heap_held), not only its code
    global running
    running = k
    seal.run(k)


def _idle():
    # A sealed meter that cannot run: the wire stays closed, for ever (a power cycle retries)
    import time

    while True:
        time.sleep(60)


def _still_sealed():
    # False once an authenticated UNSEAL opened the meter (kernel_svc.py): it ends as any board
    try:
        os.stat("/data/sealed")
        return True
    except OSError:
        return False


if _sealed:
    try:
        _boot(True)
    except BaseException as e:  # noqa: BLE001 - sealed: nothing may reach the REPL
        if not _still_sealed():
            raise
        try:
            print("meter: stopped while sealed: %s %s" % (type(e).__name__, e))
        except BaseException:  # noqa: BLE001, S110
            pass
    _idle()
else:
    _boot(False)
