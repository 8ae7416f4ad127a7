# The DC security module's key pair (tasks/dc_security.py): KEYGEN (S1/C1). In its own file so
# that its code is in RAM only for the request (lib/lazy.py); X25519 comes in with KEYGEN and
# leaves with it. PUBKEY (S2/C2) is answered by dc_security.py itself, from RAM.
# Refusals raise Refused before any state changes.
import gc
import struct
import time
from micropython import const

import store
from tasks.dc_base import Refused

_E_BAD_ARGS = const(6)
_E_FAILED = const(7)


def keygen(dc, ref, meter_id, body, t0):
    if len(body) != 1:
        raise Refused(_E_BAD_ARGS, "malformed: flags u8")
    created = 0
    if dc._sk is None or body[0] & 1:
        sk = dc._entropy(32)
        if len(sk) != 32:
            raise Refused(_E_FAILED, "no entropy")
        from x25519 import public_key

        # with the run-time GC threshold off, as for a set-up's derivations (tasks/dc_setup.py)
        th = gc.threshold()
        gc.threshold(-1)
        try:
            pk = public_key(sk)
        finally:
            gc.threshold(th)
        store.save_bytes(dc._key_path, (sk, pk))
        replaced = dc._sk is not None
        dc._sk, dc.pk = bytes(sk), pk
        sk = None
        created = 1
        if dc._setup is not None:
            dc._drop_setup("key pair replaced")
        dc._port.log("lopa: key pair %s" % ("replaced" if replaced else "created"))
    us = time.ticks_diff(time.ticks_us(), t0)
    dc._ok(ref, dc.pk + struct.pack(">IB", us, created))

