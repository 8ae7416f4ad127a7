# binascii for the emulated boards, which have no extmod (C on a Pico): hexlify and the base64
# that the WAN frames use (lib/wan.py). Its cost counts as the meter's in the C6 run.
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DEC = bytearray(b"\xff" * 256)
for _k in range(64):
    _DEC[_B64[_k]] = _k
Error = ValueError


def hexlify(b):
    return bytes(b).hex().encode()


def b2a_base64(data, newline=True):
    data = bytes(data)
    out = bytearray()
    n = len(data)
    for k in range(0, n - n % 3, 3):
        v = data[k] << 16 | data[k + 1] << 8 | data[k + 2]
        out.append(_B64[v >> 18])
        out.append(_B64[v >> 12 & 63])
        out.append(_B64[v >> 6 & 63])
        out.append(_B64[v & 63])
    r = n % 3
    if r:
        v = data[n - r] << 16 | (data[n - 1] << 8 if r == 2 else 0)
        out.append(_B64[v >> 18])
        out.append(_B64[v >> 12 & 63])
        out.append(_B64[v >> 6 & 63] if r == 2 else 61)
        out.append(61)
    if newline:
        out.append(10)
    return bytes(out)


def a2b_base64(s):
    out = bytearray()
    acc = bits = 0
    for c in bytes(s):
        if c == 61:
            break
        d = _DEC[c]
        if d == 255:
            continue
        acc = (acc << 6 | d) & 0xFFFFFF
        bits += 6
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    return bytes(out)
