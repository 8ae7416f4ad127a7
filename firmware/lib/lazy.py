# Code that is rarely run, in RAM only while it runs. Unless the firmware is frozen into
# flash, an imported module's code lives in the heap for as long as the module is imported;
# a task keeps its per-second work in its own module and its rare requests (head-end
# commands, set-up) in a second one, which it imports for the one call and drops again
# (docs/hardware.md, "Memory"). The module's names (qstrs) stay interned; its code, its
# constants and its functions are freed.
import gc
import sys


def drop(name):
    """Forget module `name` (e.g. "tasks.credit_cmd"): sys.modules and its package."""
    sys.modules.pop(name, None)
    dot = name.rfind(".")
    if dot > 0:
        pkg = sys.modules.get(name[:dot])
        leaf = name[dot + 1:]
        if pkg is not None and leaf in dir(pkg):
            delattr(pkg, leaf)


def call(name, fn, *args):
    """name.fn(*args) with module `name` imported for this call only."""
    mod = __import__(name, None, None, (fn,))
    try:
        return getattr(mod, fn)(*args)
    finally:
        drop(name)


_import = None  # the import function compact_imports() replaced


def _compacting_import(*args):
    mod = _import(*args)
    gc.collect()
    return mod


def compact_imports(on):
    """While on, garbage is collected after every import. For the boot: an import leaves
    garbage (the file system's lookups, tables that grew), and without this the objects that
    the next imports keep land among it and stay scattered over the heap when it is collected,
    so that the free heap is left in pieces too small for a WAN frame (docs/hardware.md,
    "Memory"); with it they pack low. A port that cannot replace __import__ boots as before."""
    global _import
    import builtins

    try:
        if on and _import is None:
            # The import in force, by its bare name: MicroPython's builtins.__import__
            # attribute is always the built-in one, even where an override is in place (a
            # board profile's import filter on the virtual board), which that would drop.
            _import = __import__
            builtins.__import__ = _compacting_import
        elif not on and _import is not None:
            builtins.__import__ = _import
            _import = None
    except (AttributeError, TypeError):
        pass
