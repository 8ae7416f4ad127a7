# HMAC-SHA256 that allocates nothing, for the off-switch's core (tasks/offswitch.py): core 1
# verifies commands, signs answers and seals its state record without touching the heap
# (docs/OFFSWITCH.md, "Core 1 allocates nothing"). hashlib cannot do that: every
# hashlib.sha256() and every digest() is a new object. Here one preallocated workspace holds
# the SHA-256 constants, the schedule, the chaining state, the block, the keyed midstates
# (HMAC's key ^ ipad / key ^ opad blocks, compressed once at boot) and the message and result;
# a @micropython.viper function does the word arithmetic in machine words.
#
# The viper code is kept in a string and compiled on the board at boot (exec, on core 0): a
# .py with a viper function does not compile with mpy-cross for "any architecture", which is
# how the firmware's other files are built where the board has no native architecture (the
# same reason lib/x25519_thumb.py keeps its trampoline in a string). Every official port the
# firmware runs on (rp2, stm32, unix x64) has a native emitter.
#
# Messages are at most 55 bytes: one block with its padding, so an HMAC is four compressions,
# two of them done once at boot per key. Only the boot uses this module (the viper function
# and the workspace outlive it); the HMAC itself is tasks/offswitch.py's _mac().
import struct

import hmac_sha256 as _h

from micropython import const

# the workspace's layout, as tasks/offswitch.py's (whose _mac() runs the HMAC)
_WS_K = const(0)  # 64 round constants, native-endian u32
_WS_H = const(512)  # chaining state, 8 u32 (after the schedule, 64 u32)
_WS_BLK = const(544)  # the block being compressed, 64 bytes
_MID = const(608)  # per key: inner midstate (32 bytes), outer midstate (32 bytes)
_NKEYS = const(4)  # command, reply, state record, the keyless meter's reply
_WS_SIZE = const(960)

_SRC = """
import micropython
@micropython.viper
def op(ws: ptr8, what: int, n: int):
    a0 = uint(ws)
    m = (uint(0xFFFF) << 16) | uint(0xFFFF)
    h = ptr32(a0 + 512)
    b = ptr8(a0 + 544)
    if what == 0:
        k = ptr32(a0)
        w = ptr32(a0 + 256)
        i = 0
        while i < 16:
            j = i * 4
            w[i] = (uint(b[j]) << 24) | (uint(b[j + 1]) << 16) | (uint(b[j + 2]) << 8) | uint(b[j + 3])
            i += 1
        while i < 64:
            x = uint(w[i - 15]) & m
            y = uint(w[i - 2]) & m
            s0 = ((x >> 7) | (x << 25)) ^ ((x >> 18) | (x << 14)) ^ (x >> 3)
            s1 = ((y >> 17) | (y << 15)) ^ ((y >> 19) | (y << 13)) ^ (y >> 10)
            w[i] = (uint(w[i - 16]) + s0 + uint(w[i - 7]) + s1) & m
            i += 1
        va = uint(h[0]) & m
        vb = uint(h[1]) & m
        vc = uint(h[2]) & m
        vd = uint(h[3]) & m
        ve = uint(h[4]) & m
        vf = uint(h[5]) & m
        vg = uint(h[6]) & m
        vh = uint(h[7]) & m
        i = 0
        while i < 64:
            s1 = ((ve >> 6) | (ve << 26)) ^ ((ve >> 11) | (ve << 21)) ^ ((ve >> 25) | (ve << 7))
            ch = (ve & vf) ^ ((ve ^ m) & vg)
            t1 = (vh + s1 + ch + uint(k[i]) + uint(w[i])) & m
            s0 = ((va >> 2) | (va << 30)) ^ ((va >> 13) | (va << 19)) ^ ((va >> 22) | (va << 10))
            mj = (va & vb) ^ (va & vc) ^ (vb & vc)
            t2 = (s0 + mj) & m
            vh = vg
            vg = vf
            vf = ve
            ve = (vd + t1) & m
            vd = vc
            vc = vb
            vb = va
            va = (t1 + t2) & m
            i += 1
        h[0] = (uint(h[0]) + va) & m
        h[1] = (uint(h[1]) + vb) & m
        h[2] = (uint(h[2]) + vc) & m
        h[3] = (uint(h[3]) + vd) & m
        h[4] = (uint(h[4]) + ve) & m
        h[5] = (uint(h[5]) + vf) & m
        h[6] = (uint(h[6]) + vg) & m
        h[7] = (uint(h[7]) + vh) & m
    elif what == 1:
        s = ptr32(a0 + n)
        i = 0
        while i < 8:
            h[i] = s[i]
            i += 1
    elif what == 2:
        q = ptr32(a0 + n)
        i = 0
        while i < 8:
            q[i] = h[i]
            i += 1
    elif what == 3:
        src = ptr8(a0 + 864)
        i = 0
        while i < n:
            b[i] = src[i]
            i += 1
        b[i] = 0x80
        i += 1
        while i < 62:
            b[i] = 0
            i += 1
        bits = (64 + n) * 8
        b[62] = bits >> 8
        b[63] = bits & 0xFF
    else:
        d = ptr8(a0 + n)
        i = 0
        while i < 8:
            x = uint(h[i])
            d[4 * i] = x >> 24
            d[4 * i + 1] = (x >> 16) & 0xFF
            d[4 * i + 2] = (x >> 8) & 0xFF
            d[4 * i + 3] = x & 0xFF
            i += 1
"""

_K_VALUES = (
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4,
    0xAB1C5ED5, 0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE,
    0x9BDC06A7, 0xC19BF174, 0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F,
    0x4A7484AA, 0x5CB0A9DC, 0x76F988DA, 0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7,
    0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967, 0x27B70A85, 0x2E1B2138, 0x4D2C6DFC,
    0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85, 0xA2BFE8A1, 0xA81A664B,
    0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070, 0x19A4C116,
    0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7,
    0xC67178F2)
_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB,
       0x5BE0CD19)


def compile_op():
    """The viper function, compiled from _SRC. Compiling takes several KB at its peak: the
    meter does it first thing in its build (meter.py), on a heap still nearly empty, and hands
    the function to the off-switch's boot (which compiles it if not handed one)."""
    ns = {}
    exec(_SRC, ns)
    return ns["op"]


def workspace(keys, op):
    """The workspace for _NKEYS keys (32-byte keys, in the order of offswitch._mac()'s `which`), with
    their midstates; op: compile_op()'s function. Made on core 0 (it allocates)."""
    ws = bytearray(_WS_SIZE)
    struct.pack_into("<64I", ws, _WS_K, *_K_VALUES)
    for which in range(_NKEYS):
        for half, pad in enumerate(_h.hmac_pads(keys[which])):
            struct.pack_into("<8I", ws, _WS_H, *_IV)
            ws[_WS_BLK:_WS_BLK + 64] = pad
            op(ws, 0, 0)
            op(ws, 2, _MID + 64 * which + 32 * half)
    return ws

