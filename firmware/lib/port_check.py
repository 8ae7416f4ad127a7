# Is this MicroPython one the firmware supports? main.py asks once at boot and drops this
# module. The table is host_tools/flash/versions.py's (meterctl flash and doctor refuse the
# same builds; tests_host/test_versions.py keeps the two equal): official v1.26-v1.28 for
# RPI_PICO, RPI_PICO2, PYBV11, PYBV11-THREAD, told apart by sys.implementation._build; and the
# virtual board's unix VM (1.29.0-preview on "linux"). Why: docs/hardware.md, "Boards and
# versions" (machine.Timer(hard=) from v1.26, ...).

SERIES = ((1, 26), (1, 27), (1, 28))
LATEST = "1.28.0"
VIRTUAL_VERSION = (1, 29, 0, "preview")
VIRTUAL_PLATFORM = "linux"
_PICO = "Raspberry Pi Pico with RP2040"
_PICO2 = "Raspberry Pi Pico2 with RP2350"
_PYB = "PYBv1.1 with STM32F405RG"
# (_build, _machine, the download page's board); before v1.25 there is no _build: the machine
BUILDS = (("RPI_PICO", _PICO, "RPI_PICO"), ("RPI_PICO2", _PICO2, "RPI_PICO2"),
          ("PYBV11", _PYB, "PYBV11"), ("PYBV11-THREAD", _PYB, "PYBV11"))


def identity():
    """(version tuple, sys.platform, _machine, _build, whether _thread imports) of this
    MicroPython; _thread is asked only where there is no _build (before v1.25)."""
    import sys

    im = sys.implementation
    v = tuple(im.version)
    build = getattr(im, "_build", "")
    thread = False
    if not build:
        try:
            import _thread  # noqa: F401 - only whether it is there

            thread = True
        except ImportError:
            pass
    return (v + ("",) * (4 - len(v)), sys.platform, getattr(im, "_machine", ""), build,
            thread)


def _known(machine, build, thread):
    if not build:  # before v1.25: the machine tells the board, _thread the Pyboard's variant
        build = {_PICO: "RPI_PICO", _PICO2: "RPI_PICO2",
                 _PYB: "PYBV11-THREAD" if thread else "PYBV11"}.get(machine, "")
    for b in BUILDS:
        if b[0] == build and b[1] == machine:
            return b
    return None


def problem(ident):
    """None when supported, else the one line to print (what it is, what to flash)."""
    v, platform, machine, build, thread = ident
    if platform == VIRTUAL_PLATFORM and tuple(v[:4]) == VIRTUAL_VERSION:
        return None
    what = "MicroPython v{}.{}.{}{} on {}{}".format(
        v[0], v[1], v[2], "-" + v[3] if v[3] else "", machine or platform,
        " (" + build + ")" if build and build not in machine else "")
    b = _known(machine, build, thread)
    if b is None:
        return (what + " is not a supported board: the firmware runs on "
                + ", ".join(x[0] for x in BUILDS)
                + " with MicroPython v1.26-v1.28 (docs/hardware.md, 'Boards and versions')")
    fix = f": flash {b[0]} v{LATEST} from https://micropython.org/download/{b[2]}/"
    if v[3]:
        return what + " is a development build, not a release (needs v1.26-v1.28)" + fix
    if (v[0], v[1]) not in SERIES:
        return what + " is not supported (needs v1.26-v1.28)" + fix
    return None
