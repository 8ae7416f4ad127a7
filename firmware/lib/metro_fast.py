# The metrology hot loop in native code (@micropython.viper): lib/metro.py's _accumulate,
# which stays the reference and the fallback, computing the same integers.
#
# Only for ports whose MicroPython has a native emitter for its CPU: the official rp2 and stm32
# builds (MICROPY_EMIT_THUMB, ports/rp2/mpconfigport.h and ports/stm32/mpconfigport.h, v1.28.0)
# and the unix VM of the virtual board (MICROPY_EMIT_X64, ports/unix/mpconfigport.h). mpy-cross
# compiles it only with -march (host_tools/flash/build.py leaves it out of a bytecode-only
# image); a board that cannot load it (an .mpy of another arch: ValueError, py/persistentcode.c;
# no native emitter for the source: SyntaxError) runs the pure path (metro.py).
#
# Viper ints are machine words: 32 bits on a Cortex-M, 64 on the unix VM. So every partial sum
# stays below 2**31 (blocks of _CHUNK samples, as in metro.py) and is folded into a split
# register, total = hi << 20 + lo with 0 <= lo < 2**20, held in locals; nothing signed is read
# back from a ptr32 (its load is a zero-extended 32-bit word on a 64-bit VM: -1 would read as
# 2**32 - 1). What this call added goes to `out`; metro.py adds it to the second's registers.
import micropython
from micropython import const

_LO = const(0xFFFFF)
_CHUNK = const(64)  # 64 * 4095**2 < 2**30
_HYST = const(16)
# the state list (metro.py's layout: the slots read or written here)
_OV = const(0)
_OI = const(1)
_VP = const(2)
_IP = const(3)
_ARMED = const(16)
_NX = const(17)
_X1 = const(18)
_X2 = const(21)
_N = const(24)
# out: what this call added (metro.py _fold)
OUT_LEN = const(12)  # sum v, sum i, then (hi, lo) of v*v, i*i, v*i, v[k-1]*i, v*i[k-1]


@micropython.viper
def accumulate(st: ptr32, out: ptr32, vb: ptr16, ib: ptr16, k: int, end: int):
    # Fold samples vb[k:end], ib[k:end] into the state st (array 'i'): metro._accumulate's
    # work, the sums into `out` (array 'i', OUT_LEN) from 0.
    ov = st[_OV]
    oi = st[_OI]
    vp = st[_VP] - ov
    ip = st[_IP] - oi
    armed = st[_ARMED]
    nx = st[_NX]
    t = st[_N] - k - 1  # index within the second of the sample before vb[j] is j + t
    n = end - k
    sv = 0
    si = 0
    ha = 0
    la = 0
    hb = 0
    lb = 0
    hc = 0
    lc = 0
    hd = 0
    ld = 0
    he = 0
    le = 0
    while k < end:
        m = end - k
        if m > _CHUNK:
            m = _CHUNK
        a = 0
        b = 0
        c = 0
        d = 0
        e = 0
        stop = k + m
        j = k
        while j < stop:
            v = (vb[j] >> 4) - ov
            x = (ib[j] >> 4) - oi
            sv += v
            si += x
            a += v * v
            b += x * x
            c += v * x
            d += vp * x
            e += v * ip
            if armed:
                if v >= 0:
                    armed = 0
                    if nx == 0:
                        st[_X1] = j + t
                        st[_X1 + 1] = 0 - vp
                        st[_X1 + 2] = v - vp
                    st[_X2] = j + t
                    st[_X2 + 1] = 0 - vp
                    st[_X2 + 2] = v - vp
                    nx += 1
            elif v < 0 - _HYST:
                armed = 1
            vp = v
            ip = x
            j += 1
        # carry the block's sums into the split registers (>> is arithmetic on viper ints)
        la += a & _LO
        ha += (a >> 20) + (la >> 20)
        la &= _LO
        lb += b & _LO
        hb += (b >> 20) + (lb >> 20)
        lb &= _LO
        lc += c & _LO
        hc += (c >> 20) + (lc >> 20)
        lc &= _LO
        ld += d & _LO
        hd += (d >> 20) + (ld >> 20)
        ld &= _LO
        le += e & _LO
        he += (e >> 20) + (le >> 20)
        le &= _LO
        k = stop
    st[_VP] = vp + ov
    st[_IP] = ip + oi
    st[_ARMED] = armed
    st[_NX] = nx
    st[_N] = st[_N] + n
    out[0] = sv
    out[1] = si
    out[2] = ha
    out[3] = la
    out[4] = hb
    out[5] = lb
    out[6] = hc
    out[7] = lc
    out[8] = hd
    out[9] = ld
    out[10] = he
    out[11] = le
