# Sealing (docs/SECURITY.md "Sealed meters"). On a board the USB serial carries both the
# WAN link and the REPL, and a REPL is full control (read the keys, write any file). A sealed
# meter runs with the interrupt character off (micropython.kbd_intr(-1)): a Ctrl-C on the
# wire is then a data byte for the firmware, main.py never ends, and so the REPL - and with
# it every file write over the wire (mpremote, meterctl flash) - cannot be reached.
#
# The seal is the file SEALED: creating or removing one file is a single atomic metadata
# update on littlefs, so a power cut leaves the meter either sealed or not, never torn.
# main.py checks it first thing at boot (the check must be quick: Ctrl-C works until then).
# Only the kernel changes it (an authenticated SEAL/UNSEAL through cs_security; kernel_svc.py
# set_sealed), and boot when the service input behind the sealed terminal cover asks for it:
# the cover switch open AND the service jumper fitted at power-up (meter.py). The household's
# reconnect button never unseals.
# The household's consent to the supplier reading the per-interval load profile (PROFILE;
# policy.py WAN_CONSENT, docs/SECURITY.md "Roles on the WAN") is kept the same way, here for
# RAM (one module fewer): the file CONSENT, present = given. Only the household changes it,
# locally: the reconnect button held at power-up toggles it (meter.py); no task that a WAN
# request reaches writes it. Shown in every HAN telegram (consent=on|off, tasks/han.py).
import os

SEALED = "/data/sealed"
CONSENT = "/data/consent"


def is_sealed():
    try:
        os.stat(SEALED)
        return True
    except OSError:
        return False


def consent_given():
    try:
        os.stat(CONSENT)
        return True
    except OSError:
        return False


def set_consent(on):
    # OSError from the flash goes to the caller (meter.py logs it; consent then unchanged)
    if on:
        with open(CONSENT, "w") as f:
            f.write("1")
    elif consent_given():
        os.remove(CONSENT)


def run(k):
    # The meter's main loop: kernel k runs for ever. Sealed, the firmware never returns to the
    # REPL: an error is logged and the loop goes on; unsealed it ends main.py, as on any board.
    while True:
        try:
            k.run()
        except BaseException as e:  # noqa: BLE001 - SystemExit too: sealed, never the REPL
            if not is_sealed():
                raise
            k.log("kernel", "main loop error: %s %s" % (type(e).__name__, e))
