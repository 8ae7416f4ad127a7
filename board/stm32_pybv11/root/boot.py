# Pyboard boot.py (docs/hardware.md): flash at / as on a Pico, /lib on sys.path; USB
# serial only, no mass storage (the host and the meter would both write the FAT volume).
# Safe mode (hold USR while pressing RST) skips this file.
import os
import sys

import pyb

pyb.usb_mode("VCP")

# With a micro SD card the port mounts it at /sd and runs this file from it (ports/stm32/
# main.c): the card, which holds the firmware, goes to / and /flash stays where it is (a mount
# made earlier wins its prefix, extmod/vfs.c mp_vfs_lookup_path). Without one, the flash.
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
