# Pyboard boot.py (docs/hardware.md): flash at / as on a Pico, /lib on sys.path; USB
# serial only, no mass storage (the host and the meter would both write the FAT volume).
# Safe mode (hold USR while pressing RST) skips this file.
import os
import sys

import pyb

pyb.usb_mode("VCP")

# os.mount() with no arguments lists the mounts (MicroPython >= 1.25; not in the stubs).
for _fs, _mp in os.mount():  # type: ignore[call-arg]
    if _mp == "/flash":
        os.umount("/flash")
        os.mount(_fs, "/")
        os.chdir("/")
        break

for _k in range(len(sys.path)):
    if sys.path[_k].startswith("/flash"):
        sys.path[_k] = sys.path[_k][len("/flash"):]
