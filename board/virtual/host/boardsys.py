# The virtual board's `sys` module object: empty here. The ROM (board/virtual/host/rom.py)
# imports it from the ROM image at boot and fills it with the VM's own sys, less what the
# official rp2 and stm32 builds do not have, so that `import sys` gives a real module as on a
# board (its __dict__, and ImportError for `from sys import` a name it lacks).
