# boot.py for a Pyboard (deployed to the flash's root by `meterctl flash`).
#
# The stm32 port mounts the internal flash at /flash and runs from there; the
# firmware, like a Pico, expects its filesystem at / with /lib on sys.path.
# So, on every boot: remount the flash at /, and point sys.path at /lib.
#
# USB: serial only (VCP), no mass storage. With mass storage on, the host PC
# can write the same FAT volume the meter writes its logs and counters to, and
# one of the two corrupts it. To get the drive back for a while, start in safe
# mode (hold USR while pressing RST, release at the orange LED): boot.py is
# skipped.
import os
import sys

import pyb

pyb.usb_mode("VCP")

# mount() without arguments lists the mounts (MicroPython >= 1.25; the stubs
# know only the two-argument form).
for _fs, _mp in os.mount():  # type: ignore[call-arg]
    if _mp == "/flash":
        os.umount("/flash")
        os.mount(_fs, "/")
        os.chdir("/")
        break

for _k in range(len(sys.path)):
    if sys.path[_k].startswith("/flash"):
        sys.path[_k] = sys.path[_k][len("/flash"):]
