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
# stays below 2**31 (blocks of _CHUNK samples, as in metro.py) and is carried into the state's
# split registers, total = hi << 20 + lo with 0 <= lo < 2**20, as metro.py does: (hi, lo) is
# divmod(total, 2**20) either way, so both paths leave the same integers. A ptr32 load is a
# zero-extended 32-bit word on a 64-bit VM (-1 reads as 2**32 - 1), so a signed word (the sums,
# a register's hi) is only ever added to and stored back, which is exact modulo 2**32; no
# comparison or right shift touches one.
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
_SV = const(4)
_SI = const(5)
_SVV = const(6)  # (hi, lo) registers: v*v, i*i, v[k]*i[k], v[k-1]*i[k], v[k]*i[k-1]
_SII = const(8)
_S0 = const(10)
_SM = const(12)
_SP = const(14)


@micropython.viper
def accumulate(j: int, vb: ptr16, ib: ptr16, end: int, st: ptr32):
    # Fold samples vb[j:end], ib[j:end] into the state st (array 'i'), as metro._accumulate
    # does. The first three arguments are the loop's: the native emitter keeps a function's first three locals in registers
    # (r4-r6 on Thumb, py/emitnative.c and py/asmthumb.h REG_LOCAL_NUM, v1.28.0).
    ov = st[_OV]
    oi = st[_OI]
    vp = st[_VP] - ov
    ip = st[_IP] - oi
    armed = st[_ARMED]
    nx = st[_NX]
    t = st[_N] - j - 1  # index within the second of the sample before vb[j] is j + t
    n = end - j
    sv = 0
    si = 0
    while j < end:
        stop = j + _CHUNK
        if stop > end:
            stop = end
        a = 0
        b = 0
        c = 0
        d = 0
        e = 0
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
        # carry the block's sums into the split registers
        lo = st[_SVV + 1] + (a & _LO)
        st[_SVV] = st[_SVV] + (a >> 20) + (lo >> 20)
        st[_SVV + 1] = lo & _LO
        lo = st[_SII + 1] + (b & _LO)
        st[_SII] = st[_SII] + (b >> 20) + (lo >> 20)
        st[_SII + 1] = lo & _LO
        lo = st[_S0 + 1] + (c & _LO)
        st[_S0] = st[_S0] + (c >> 20) + (lo >> 20)
        st[_S0 + 1] = lo & _LO
        lo = st[_SM + 1] + (d & _LO)
        st[_SM] = st[_SM] + (d >> 20) + (lo >> 20)
        st[_SM + 1] = lo & _LO
        lo = st[_SP + 1] + (e & _LO)
        st[_SP] = st[_SP] + (e >> 20) + (lo >> 20)
        st[_SP + 1] = lo & _LO
    st[_VP] = vp + ov
    st[_IP] = ip + oi
    st[_ARMED] = armed
    st[_NX] = nx
    st[_N] = st[_N] + n
    st[_SV] = st[_SV] + sv
    st[_SI] = st[_SI] + si


@micropython.viper
def deinterleave(k: int, words: ptr32, v_buf: ptr16, end: int, i_buf: ptr16, j: int):
    # The rp2 DMA ring's words[k:end] (V | I << 16, 12 bits each: board/rp2_pico DmaAdc) into
    # v_buf[j:], i_buf[j:] as 16-bit values (<< 4), what DmaAdc._split does in Python. A word is
    # below 2**28 (bits 12-15 are 0), so its zero-extended load is the same on every word size.
    while k < end:
        w = words[k]
        v_buf[j] = (w & 0xFFF) << 4
        i_buf[j] = w >> 12
        k += 1
        j += 1
