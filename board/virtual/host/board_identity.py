# The virtual board's identity under a board's port profile (host_tools/sim/profiles.py;
# docs/virtual-board.md, "Port profiles"): part of the ROM image (host_tools/sim/fleet.py
# rom_image), imported by rom.py only when the supervisor passes a profile (MPVM_PROFILE), so
# the unix profile pays no heap for it. It makes the VM present itself as that official build:
#   - `sys` / `usys`: the VM's sys with the board's platform, implementation, maxsize, version;
#   - only the board's built-in modules import (an overridden builtins.__import__);
# and returns os.uname()'s values for rom.py's attrtuple.
import sys

_real_import = None
_hidden = None  # {name: True}: the unix VM's modules the board lacks (and _vhw)
_port = None  # the port's hardware models (port_rp2 / port_stm32), when the ROM image has them


def _attrtuple(name, fields, values):
    # A board's C attrtuple (py/objattrtuple.c): a tuple whose items are also attributes,
    # printed "(field=value, ...)"; a namedtuple would print its type's name first.
    from collections import namedtuple

    class AttrTuple(namedtuple(name, fields)):
        def __repr__(self):
            return "(" + ", ".join("%s=%r" % (f, self[i]) for i, f in enumerate(fields)) + ")"

        __str__ = __repr__

    return AttrTuple(*values)


def _on_path(top):
    # A module `top` on sys.path's filesystems: a board imports it from there when it has no
    # built-in of that name. The VM's frozen modules are not the board's: not looked at.
    import os

    for p in sys.path:
        if p == ".frozen":
            continue
        base = (p + "/" + top) if p else top
        for cand in (base + ".py", base + ".mpy", base):
            try:
                os.stat(cand)
                return True
            except OSError:
                pass
    return False


def _import(name, g=None, loc=None, fromlist=None, level=0):
    # builtins.__import__: py/runtime.c mp_import_name calls it for every import statement
    # (MICROPY_CAN_OVERRIDE_BUILTINS). A unix built-in the board lacks raises the board's
    # ImportError (py/builtinimport.c: "no module named '%q'", the top-level name), unless
    # sys.modules holds the name (py/builtinimport.c looks there first: a port model put it
    # there, or it came from the filesystem) or a file of that name is on sys.path.
    if level == 0:
        i = name.find(".")
        top = name if i < 0 else name[:i]
        if top in _hidden and top not in sys.modules and not _on_path(top):
            raise ImportError("no module named '%s'" % top)
    return _real_import(name, g, loc, fromlist, level)


def apply(prof, hw, board_sys):
    """Give the board's sys (rom.py's board_sys: a module holding the VM's sys names a board
    has, boardsys.py) the board's identity, install the import filter, then the port's models
    (install(hw): they put machine, rp2, pyb, stm, ... into sys.modules); returns
    os.uname()'s values."""
    global _real_import, _hidden
    import builtins

    fields = ["name", "version", "_machine", "_mpy", "_build"]
    values = ["micropython", tuple(prof["impl_version"]), prof["machine"], prof["mpy"],
              prof["build"]]
    if prof["thread"]:
        fields.append("_thread")  # py/modsys.c: "GIL" with MICROPY_PY_THREAD_GIL, else "unsafe"
        values.append("GIL" if prof["thread"] == "gil" else "unsafe")
    board_sys.implementation = _attrtuple("implementation", tuple(fields), values)
    board_sys.platform = prof["platform"]
    board_sys.maxsize = 2147483647  # a 32-bit port's (MP_SSIZE_MAX)
    board_sys.version = "3.4.0; MicroPython " + prof["version"]  # py/modsys.c
    _hidden = {}
    for n in prof.pop("hidden", ()):
        _hidden[n] = True
    prof.pop("modules", None)  # what the board has is now what imports: the list is not kept
    _real_import = builtins.__import__
    builtins.__import__ = _import
    if _port is not None:
        _port.install(hw)
    # The board's heap at its REPL (profiles.repl_free_bytes, set by the supervisor): the VM
    # has headroom for the virtual board's own objects (C code in flash on a board); a ballast,
    # kept in the profile on hw where the firmware cannot reach it, takes the rest. Its 32-byte
    # object header is counted in.
    n = prof.get("free_at_boot")
    if n:
        import gc

        fill_qstr_pools()
        gc.collect()
        n = gc.mem_free() - n - 32
        if n < 0:
            print("virtual board: its own objects exceed the heap's headroom by %d bytes: "
                  "the firmware has less heap than the board's" % -n, file=sys.stderr)
            n = 0
        prof["free_at_boot"] = bytearray(n)
    return (prof["sysname"], prof["nodename"], prof["release"], prof["version"],
            prof["machine"])


# The names a board's dynamic qstr pools hold before they need a seventh: 20 + 40 + ... + 640
# (py/qstr.c qstr_add doubles the last pool's alloc; the first dynamic pool follows a static
# pool whose alloc is 10: MICROPY_ALLOC_QSTR_ENTRIES_INIT, py/qstr.c, and mpy-tool.py's
# frozen pool, min(len, 10); v1.28.0).
_BOARD_POOLS_NAMES = 1260
# The 640-entry pool on the VM: 640 * (8 + 2 + 1) B + its header, ~7 KB; a name's chars are
# far less, the 1,280-entry pool twice as much
_POOL_JUMP = (4096, 10240)


def fill_qstr_pools():
    # On a board the ROM's names are C (static pools): the firmware's first name opens the
    # first 20-entry dynamic pool. Here the ROM's ~580 names are interned in the VM's dynamic
    # pools (20 ... 320), so the firmware's names landed in the 640- and 1,280-entry pools
    # (~21 KB of the firmware's heap where a board's firmware of ~1,000 names pays ~9 KB as
    # 32-bit objects, ~13 KB as 64-bit ones). The pools are filled with names of the ROM's
    # (none an identifier: a leading space) up to the board's 1,260, before the ballast is
    # measured: the firmware's first name then opens the 1,280-entry pool (~14 KB), at least
    # what its first 1,260 names cost on a board. getattr interns its name argument
    # (py/modbuiltins.c mp_builtin_getattr, mp_obj_str_get_qstr).
    import gc

    gc.collect()
    i = 0
    # the pool that the ROM's names left open is filled, then the 640-entry pool, whose
    # allocation is the one jump of more than _POOL_JUMP on the way
    opened = 0
    while i < _BOARD_POOLS_NAMES:
        before = gc.mem_free()
        getattr(_hidden, " vb%d" % i, None)
        i += 1
        jump = before - gc.mem_free()
        if jump > _POOL_JUMP[1]:
            return  # the ROM's own names needed the seventh pool: nothing to fill
        if jump > _POOL_JUMP[0]:
            opened = i  # this name is the 640-entry pool's first
        if opened and i - opened == 639:
            return


def load(prof):
    """Import the port's hardware models (port_rp2 / port_stm32, in the ROM image once the rp2
    and stm32 work has landed) while the image is mounted; nothing when it holds none.
    Returns apply(), for rom.py to call once the filesystem is mounted."""
    global _port
    if prof["port"] in ("rp2", "stm32"):
        name = "port_" + prof["port"]
        try:
            _port = __import__(name)
        except ImportError as e:
            if name not in str(e):
                raise  # the model is there and failed: say so, as a board's broken ROM would
    return apply
