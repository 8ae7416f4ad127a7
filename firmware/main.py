# Boot: close the console if the meter is sealed, then start the meter (meter.py builds the
# kernel and its tasks on the board) and run it (seal.run).
#
# Sealed (lib/seal.py): Ctrl-C goes off before anything else runs, so that the REPL cannot be
# reached; the check is one stat(), because until it is done a Ctrl-C still interrupts. A
# Ctrl-C that lands before it is ignored on a sealed meter and honoured on an unsealed one.
import os

import micropython

_broke = False
while True:
    try:
        try:
            os.stat("/data/sealed")  # lib/seal.py SEALED
            micropython.kbd_intr(-1)
            _sealed = True
        except OSError:
            _sealed = False
        break
    except KeyboardInterrupt:
        _broke = True
if _broke and not _sealed:
    raise KeyboardInterrupt
del _broke

import gc  # noqa: E402
import sys  # noqa: E402

# An unsupported MicroPython: one line, and the REPL (docs/hardware.md, "Boards and versions");
# a sealed meter's REPL stays closed, so it idles instead
import port_check  # noqa: E402

_why = port_check.problem(port_check.identity())
sys.modules.pop("port_check", None)
del port_check
if _why:
    print(_why)
    import time

    while _sealed:
        time.sleep(60)
else:
    gc.collect()  # this file's compilation left garbage: none of it under the modules' objects
    import lazy

    lazy.compact_imports(True)  # the firmware's objects packed low in the heap (lib/lazy.py)
    import meter  # after the seal check, which must come first
    import seal

    _k = meter.start(_sealed)
    lazy.compact_imports(False)
    # meter.py only builds the meter: dropped, its code leaves the heap (docs/hardware.md,
    # "Memory")
    del meter, _sealed
    sys.modules.pop("meter", None)
    seal.run(_k)
