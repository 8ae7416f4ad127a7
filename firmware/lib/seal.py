# Sealing (docs/SECURITY.md "Sealed meters"). On a board the USB serial carries both the
# WAN link and the REPL, and a REPL is full control (read the keys, write any file). A sealed
# meter runs with the interrupt character off (micropython.kbd_intr(-1)): a Ctrl-C on the
# wire is then a data byte for the firmware, main.py never ends, and so the REPL - and with
# it every file write over the wire (mpremote, meterctl flash) - cannot be reached.
#
# The seal is the file SEALED: creating or removing one file is a single atomic metadata
# update on littlefs, so a power cut leaves the meter either sealed or not, never torn.
# main.py checks it first thing at boot (the check must be quick: Ctrl-C works until then).
# Only the kernel changes it (an authenticated SEAL/UNSEAL through cs_security), and boot
# when the local button is held at power-up (a technician on site).
import os

import micropython
from micropython import const

SEALED = "/data/sealed"
_CTRL_C = const(3)


def is_sealed():
    try:
        os.stat(SEALED)
        return True
    except OSError:
        return False


def apply(on):
    # Ctrl-C off while sealed; on again (the board default) when not.
    micropython.kbd_intr(-1 if on else _CTRL_C)


def set_sealed(on):
    # Persist first, then act: a power cut in between boots in the persisted state.
    if on:
        with open(SEALED, "w") as f:
            f.write("sealed\n")
    elif is_sealed():
        os.remove(SEALED)
    apply(on)


def run(k):
    # The meter's main loop: kernel k runs for ever. Sealed, the firmware never returns to the
    # REPL: an error is logged and the loop goes on; unsealed it ends main.py, as on any board.
    while True:
        try:
            k.run()
        except Exception as e:  # noqa: BLE001
            if not is_sealed():
                raise
            k.log("kernel", "main loop error: %s %s" % (type(e).__name__, e))
