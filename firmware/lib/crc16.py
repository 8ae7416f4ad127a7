# CRC-16/ARC (poly 0x8005 reflected = 0xA001, init 0, no final XOR), the checksum of
# DSMR 4/5 P1 telegrams. Table driven: 512 bytes, built once at import. Runs unchanged on
# CPython and MicroPython. Check value (the CRC catalogue): arc(b"123456789") == 0xBB3D.
from array import array

_TABLE = array("H", bytes(512))
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0xA001 if _c & 1 else _c >> 1
    _TABLE[_i] = _c
del _i, _c


def arc(data, crc=0):
    """CRC-16/ARC of data (bytes-like), continuing from crc."""
    t = _TABLE
    for b in data:
        crc = (crc >> 8) ^ t[(crc ^ b) & 0xFF]
    return crc
