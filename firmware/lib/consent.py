# The household's consent to the supplier reading the per-interval load profile (PROFILE;
# policy.py WAN_CONSENT, docs/SECURITY.md "Roles"). Like the seal (lib/seal.py) it is one
# file, CONSENT, present = given: creating or removing it is one atomic metadata update, so a
# power cut leaves it given or not, never torn. Only the household changes it, locally: the
# reconnect button held at power-up toggles it (meter.py). Nothing on the WAN can: no task
# that a WAN request reaches writes this file. Shown in every HAN telegram (consent=on|off).
import os

CONSENT = "/data/consent"


def is_given():
    try:
        os.stat(CONSENT)
        return True
    except OSError:
        return False


def set_given(on):
    # OSError from the flash goes to the caller (meter.py logs it; consent then unchanged)
    if on:
        with open(CONSENT, "w") as f:
            f.write("1")
    else:
        try:
            os.remove(CONSENT)
        except OSError:
            if is_given():
                raise
