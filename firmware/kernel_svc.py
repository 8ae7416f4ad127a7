# The kernel's own services (kernel.py; policy rows with receiver "kernel"): STATS, log reads
# and SEAL/UNSEAL, rare head-end requests. In their own module so that their code is in RAM
# only while one runs (lib/lazy.py, docs/hardware.md "Memory").
import json
import os
import struct
from micropython import const

import kernel
import micropython
import seal

_CTRL_C = const(3)
# kernel.py's row layout (a task's row of kernel.NF ints), the fields stats() reads
_SHARE = const(3)
_LATE_LAST = const(5)
_LATE_WORST = const(6)
_HANDLED = const(7)
_ERRORS = const(8)
_QDROP = const(14)
_LOG_DROPPED = const(7)  # row 0 (the kernel's own) keeps it in _HANDLED


def own(k, sender, kind, payload):
    ref = payload[0]
    if kind == "stats":
        # Compact, and a task's "dropped"/"errors" only when not 0: with every HASM task
        # the answer must stay under the WAN payload cap (1024 bytes).
        st = stats(k)
        for v in st["tasks"].values():
            for f in ("dropped", "errors"):
                if not v[f]:
                    del v[f]
        body = json.dumps(st, separators=(",", ":"))
        k._route("kernel", sender, "stats_data", (ref, 0, body))
    elif kind == "log_read":
        _, name, from_seq, max_n = payload
        recs = read_log(k, name, from_seq, max_n)
        if recs is None:
            k._route("kernel", sender, "log_data", (ref, 6, "unknown log"))
            return
        nxt = recs[-1][0] + 1 if recs else from_seq
        body = json.dumps({"log": name, "records": recs, "next": nxt})
        k._route("kernel", sender, "log_data", (ref, 0, body))
    elif kind == "seal":
        # The console (the REPL over the WAN's USB serial) is the platform's door around
        # every task: only the kernel opens or closes it (lib/seal.py).
        on = bool(payload[1])
        try:
            set_sealed(on)
        except OSError as e:  # the flash refused the write: nothing changed
            k.log("kernel", "seal: failed %s" % e)
            k._route("kernel", sender, "seal_data", (ref, 7, "seal not persisted"))
            return
        k.log("kernel", "seal: %s (WAN command)" % ("sealed" if on else "unsealed"))
        k._route("kernel", sender, "seal_data", (ref, 0, json.dumps({"sealed": on})))


# -- the seal (lib/seal.py): only the kernel changes it, and the boot when the service input
# behind the terminal cover asks for it at power-up (meter.py) ----------------------------------
def _apply(on):
    # Ctrl-C off while sealed; on again (the board default) when not.
    micropython.kbd_intr(-1 if on else _CTRL_C)


def set_sealed(on):
    # Persist first, then act: a power cut in between boots in the persisted state.
    if on:
        with open(seal.SEALED, "w") as f:
            f.write("sealed\n")
    elif seal.is_sealed():
        os.remove(seal.SEALED)
    _apply(on)


def stats(k):
    # the last complete window (kernel.py _window): each task's CPU share and lateness
    length, sleep = k._last_window
    tasks = {}
    f = k._f
    nf = kernel.NF
    for i in range(1, len(k._names)):
        b = i * nf
        tasks[k._names[i]] = {
            "cpu_pct": round(f[b + _SHARE] * 100 / length, 2) if length else 0,
            "late_us": f[b + _LATE_LAST], "late_worst_us": f[b + _LATE_WORST],
            "handled": f[b + _HANDLED], "dropped": f[b + _QDROP], "errors": f[b + _ERRORS],
        }
    busy = round((length - sleep) * 100 / length, 2) if length else 0
    return {"window_us": length, "cpu_pct": busy, "refused": k.refused,
            "log_dropped": f[_LOG_DROPPED], "tasks": tasks}


def read_log(k, name, from_seq=0, max_n=16):
    ring = k._logs.get(name)
    if ring is None:
        return None
    out = []
    for seq, data in ring.records(from_seq, max_n):
        out.append((seq, struct.unpack(">I", data[:4])[0], data[4:].decode()))
    return out
