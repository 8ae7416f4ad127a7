"""The MicroPython code the component bench sends to a board over its raw REPL.

It runs the firmware's own modules, as flashed on the board (``lopa``, ``x25519``,
``hmac_sha256``, ``metro`` and the DC security task ``tasks.dc_security`` with its set-up code
``tasks.dc_setup``): a :class:`DcSecurity` object of the bench's own (its own data directory,
``/bench_lopa``, which it never writes: the bench commits no group to flash) handles the very
requests a meter's DC security task handles, and the board times itself:

- on an emulated board with ``emu.count()`` (instructions under QEMU, cycles under rp2040js);
- everywhere else with ``time.ticks_us()``.

Every function returns a tuple that the host reads with ``ast.literal_eval`` from the line
``R <repr>``; the host checks the results (public keys, pair keys, ciphertexts) against
``cryptography``. The code keeps no state on the board beyond the raw REPL's globals: a soft
reset leaves the board as it was.
"""

from __future__ import annotations

# Sent once per connection, after the raw REPL is entered. {me} is the board's member id.
PRELUDE = """
import gc, os, struct, sys, time
import lopa
from tasks import dc_security as _dcs
try:
    import emu
    _now = emu.count
    def _dt(t0):
        return emu.count() - t0
except ImportError:
    _now = time.ticks_us
    def _dt(t0):
        return time.ticks_diff(time.ticks_us(), t0)

class _Port:
    def __init__(self):
        self.out = []
    def send(self, to, kind, payload):
        self.out.append(payload)
    def log(self, text):
        pass
    log_flood = log

_ME = {me}
_dc = _dcs.DcSecurity(_Port(), {{"entropy": os.urandom, "dir": "/bench_lopa", "ram_reserve": 0}})
_PK = []
_T = [1000]

def _ask(kind, body):
    _dc.handle("cs_security", kind, (1, _ME, body))
    return _dc._port.out.pop()

def b_info():
    f = None
    try:
        import machine
        f = machine.freq()
    except (ImportError, AttributeError):
        pass
    v = sys.implementation.version
    e = None
    try:
        e = (emu.UNIT, emu.NOMINAL_HZ, emu.BOARD)
    except NameError:
        pass
    return (sys.implementation.name, "%d.%d.%d" % v[:3], sys.platform,
            getattr(sys.implementation, "_machine", ""), f, e)

def b_c1():
    import x25519
    gc.collect()
    t0 = _now()
    sk = os.urandom(32)
    pk = x25519.public_key(sk)
    d = _dt(t0)
    _dc._sk, _dc.pk = sk, pk
    _dc._release()
    return d, sk.hex(), pk.hex()

def b_c2():
    gc.collect()
    t0 = _now()
    a = _ask("pubkey", b"")
    d = _dt(t0)
    return d, a[1], bytes(a[2][:32]).hex()

def b_drop():
    _dc._groups = {{}}
    _dc._setup = None
    _dc._release()

def b_c3(gid, n):
    b_drop()
    a = _ask("group_begin", bytes((len(gid),)) + gid + struct.pack(">HBf", n, 0, 0.0))
    if a[1]:
        return ("refused", 0, a[2])
    me = bytes((len(gid),)) + gid + struct.pack(">HB", 0, 1) + struct.pack(">Q", _ME) + _dc.pk
    total = 0
    for body in [me] + _PK:
        gc.collect()
        t0 = _now()
        try:
            _dc.handle("cs_security", "group_keys", (1, _ME, body))
            while _dc._setup is not None and _dc._setup.work:
                _dc.step()
        except MemoryError:
            got = _dc._setup.got if _dc._setup is not None else 0
            b_drop()
            return ("refused", got, "MemoryError")
        total += _dt(t0)
        a = _dc._port.out.pop()
        if a[1]:
            got = _dc._setup.got if _dc._setup is not None else 0
            b_drop()
            return ("refused", got, a[2])
    s = _dc._setup
    from tasks import dc_round  # the round code, as a commit brings it in
    g = dc_round._Group(gid, s.n, s.m, s.lam, s.my_id, s.mem)
    _dc._groups[gid] = g
    _dc._setup = None
    _dc._release()
    import hashlib
    h = hashlib.sha256()
    for i in range(s.n - 1):
        h.update(g.mem.id_at(i))
        h.update(g.mem.key_at(i))
    return ("ok", total, h.digest().hex())

def b_c4(gid, id_j, pk_hex):
    import x25519  # loaded, as during a set-up: the step does not import it
    pk = bytes.fromhex(pk_hex)
    gc.collect()
    t0 = _now()
    k = lopa.pair_key(_dc._sk, pk, gid, _ME, id_j)
    d = _dt(t0)
    _dc._release()
    return d, k.hex()

def _slot(g):
    return (g.h_x - 1) % _dcs.HIST

def b_c5(gid, x_cold, x_hot):
    g = _dc._groups[gid]
    t = _T[0]
    _T[0] = t + 2
    g.pre_t = g.job_t = -1
    gc.collect()
    t0 = _now()
    _dc._interval(t, x_cold)
    k = _slot(g)
    while not g.h_f[k]:
        _dc.step()
    cold = _dt(t0)
    c_cold = g.h_c[k]
    while g.job_t >= 0:
        _dc.step()
    gc.collect()
    t0 = _now()
    _dc._interval(t + 1, x_hot)
    hot = _dt(t0)
    k = _slot(g)
    c_hot = g.h_c[k] if g.h_f[k] else -1
    while g.job_t >= 0:
        _dc.step()
    return cold, hot, t, c_cold, c_hot, g.enc_cold, g.enc_hot

def b_ram():
    gc.collect()
    gc.collect()
    return gc.mem_alloc(), gc.mem_free()

def b_tick(rate):
    # one second of a 50 Hz test wave per channel, in the 8 chunks a metrology task reads
    import math, metro
    from array import array
    w = 6.283185307179586 * 50 / rate
    per = rate // 8
    bufs = []
    for c in range(8):
        v = array("H", bytes(2 * per))
        i = array("H", bytes(2 * per))
        for k in range(per):
            a = w * (c * per + k)
            v[k] = 32768 + int(20000 * math.sin(a))
            i[k] = 32768 + int(8000 * math.sin(a - 0.5))
        bufs.append((v, i))
    acc = metro.Accumulator(rate, 1.0, 1.0, 0.0)
    e = metro.Energy()
    gc.collect()
    t0 = _now()
    for v, i in bufs:
        acc.feed(v, i, per)
    r = acc.result()
    e.add(r[2], 1)
    d = _dt(t0)
    native = metro._fast is not None
    sys.modules.pop("metro", None)
    sys.modules.pop("metro_fast", None)
    return d, r, native
"""
