# Pyboard boot.py (docs/hardware.md): the micro SD card (run from it), else the flash, at /
# as on a Pico, /lib on sys.path; USB serial only, no mass storage. Safe mode skips this file.
import os
import sys

import pyb

pyb.usb_mode("VCP")

# os.mount() with no arguments lists the mounts (MicroPython >= 1.25; not in the stubs).
_mounts = {_mp: _fs for _fs, _mp in os.mount()}  # type: ignore[call-arg]
_root = "/sd" if "/sd" in _mounts else "/flash"
if _root in _mounts:
    os.umount(_root)
    os.mount(_mounts[_root], "/")
    os.chdir("/")

for _k in range(len(sys.path)):
    if sys.path[_k].startswith(_root):
        sys.path[_k] = sys.path[_k][len(_root):]
del _mounts
