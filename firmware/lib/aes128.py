# AES-128 encryption (FIPS-197) in pure MicroPython: the WAN codec's block cipher where the
# MicroPython build has no cryptolib (the official PYBV11 firmware: docs/hardware.md, "Boards
# and versions"). Same surface as cryptolib.aes(key, 1): ECB, encrypt(src[, dst]) with src
# in place allowed. Only the forward cipher: CTR (lib/wan.py) never decrypts a block.
#
# Secrets: the key and every state byte. No branch and no loop bound depends on them; the
# S-box is the one memory access indexed by a secret, into a RAM bytearray (what that leaks
# where: docs/SECURITY.md, "AES without cryptolib"). xtime is a mask, not a branch or table.
# RAM: the S-box (256 B) built once at import; per key 176 B of round keys and a 16-byte
# state, allocated in aes(): encrypt() into dst allocates nothing.

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):  # type: ignore[misc]  # the CPython stand-in
        return x


MODE_ECB = const(1)
_BLOCK = const(16)


def _make_sbox():
    """The S-box from its definition (inverse in GF(2^8), then the affine map): no table
    in the code to mistype. Indices and branches here are public (0..255 in order)."""
    sb = bytearray(256)
    p = q = 1
    while True:
        p = (p ^ (p << 1) ^ (0x1B if p & 0x80 else 0)) & 0xFF  # p * 3
        q ^= q << 1  # q / 3
        q ^= q << 2
        q ^= q << 4
        q &= 0xFF
        if q & 0x80:
            q ^= 0x09
        x = q ^ (q << 1) ^ (q << 2) ^ (q << 3) ^ (q << 4)
        sb[p] = (x ^ (x >> 8) ^ 0x63) & 0xFF
        if p == 1:
            break
    sb[0] = 0x63
    return sb


_SBOX = _make_sbox()


def _expand(key):
    """The 11 round keys of a 16-byte key, one 176-byte bytearray."""
    sb = _SBOX
    rk = bytearray(176)
    rk[:16] = key
    rcon = 1
    for i in range(16, 176, 4):
        a = rk[i - 4]
        b = rk[i - 3]
        c = rk[i - 2]
        d = rk[i - 1]
        if not i & 15:  # i is public: every 4th word is RotWord, SubWord, Rcon
            a, b, c, d = sb[b] ^ rcon, sb[c], sb[d], sb[a]
            rcon = ((rcon << 1) ^ (rcon >> 7) * 0x1B) & 0xFF
        rk[i] = rk[i - 16] ^ a
        rk[i + 1] = rk[i - 15] ^ b
        rk[i + 2] = rk[i - 14] ^ c
        rk[i + 3] = rk[i - 13] ^ d
    return rk


class aes:  # cryptolib's name, so that wan.py calls either the same way
    """aes(key, 1): AES-128 in ECB mode, encryption only (cryptolib.aes's subset)."""

    def __init__(self, key, mode):
        if mode != MODE_ECB:
            raise ValueError("aes128: only mode 1 (ECB) is provided")
        if len(key) != _BLOCK:
            raise ValueError("aes128: the key must be 16 bytes")
        self._rk = _expand(key)
        self._s = bytearray(2 * _BLOCK)

    def encrypt(self, src, dst=None):
        """Each 16-byte block of src encrypted into dst (src itself is allowed), or into
        new bytes that are returned."""
        n = len(src)
        if n % _BLOCK:
            raise ValueError("aes128: the input must be a multiple of 16 bytes")
        if dst is None:
            out = bytearray(n)
        else:
            if len(dst) < n:
                raise ValueError("aes128: the output buffer is too small")
            out = dst
        for o in range(0, n, _BLOCK):
            _encrypt_block(self._rk, self._s, src, out, o)
        return bytes(out) if dst is None else None


def _encrypt_block(rk, s, src, out, o):
    """out[o:o + 16] = AES-128(src[o:o + 16]) with round keys rk; s is 32 bytes of scratch:
    the rounds go back and forth between its halves (no copy, no allocation)."""
    sb = _SBOX
    for i in range(16):
        s[i] = src[o + i] ^ rk[i]
    a = 0  # the state's half; the round writes the other, b
    for k in range(16, 160, 16):
        b = 16 - a
        # SubBytes and ShiftRows (a gather), MixColumns and AddRoundKey, column by column
        for c in range(0, 16, 4):
            a0 = sb[s[a + c]]
            a1 = sb[s[a + ((c + 5) & 15)]]
            a2 = sb[s[a + ((c + 10) & 15)]]
            a3 = sb[s[a + ((c + 15) & 15)]]
            t = a0 ^ a1 ^ a2 ^ a3
            # xtime(v) = v * 2 in GF(2^8): shift, and reduce under a mask of v's top bit
            # (0 or -1): no branch, no table
            v = a0 ^ a1
            s[b + c] = a0 ^ t ^ ((v << 1) ^ 0x1B & -(v >> 7)) & 0xFF ^ rk[k + c]
            v = a1 ^ a2
            s[b + c + 1] = a1 ^ t ^ ((v << 1) ^ 0x1B & -(v >> 7)) & 0xFF ^ rk[k + c + 1]
            v = a2 ^ a3
            s[b + c + 2] = a2 ^ t ^ ((v << 1) ^ 0x1B & -(v >> 7)) & 0xFF ^ rk[k + c + 2]
            v = a3 ^ a0
            s[b + c + 3] = a3 ^ t ^ ((v << 1) ^ 0x1B & -(v >> 7)) & 0xFF ^ rk[k + c + 3]
        a = b
    for i in range(16):  # the last round has no MixColumns
        out[o + i] = sb[s[a + ((i * 5) & 15)]] ^ rk[160 + i]
    for i in range(32):
        s[i] = 0  # no state of this block left behind
