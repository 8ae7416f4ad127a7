# Code that is rarely run, in RAM only while it runs. Unless the firmware is frozen into
# flash, an imported module's code lives in the heap for as long as the module is imported;
# a task keeps its per-second work in its own module and its rare requests (head-end
# commands, set-up) in a second one, which it imports for the one call and drops again
# (docs/hardware.md, "Memory"). The module's names (qstrs) stay interned; its code, its
# constants and its functions are freed.
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
