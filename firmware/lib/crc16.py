# CRC-16/ARC (poly 0x8005 reflected = 0xA001, init 0, no final XOR), the checksum of
# DSMR 4/5 P1 telegrams. Driven by a table of 16 entries, a nibble at a time (two lookups a
# byte): a 256-entry table would take 512 bytes of RAM for good, for a telegram a second.
# Runs unchanged on CPython and MicroPython. Check value (the CRC catalogue):
# arc(b"123456789") == 0xBB3D.
_NIBBLE = (0x0000, 0xCC01, 0xD801, 0x1400, 0xF001, 0x3C00, 0x2800, 0xE401,
           0xA001, 0x6C00, 0x7800, 0xB401, 0x5000, 0x9C01, 0x8801, 0x4400)


def arc(data, crc=0):
    """CRC-16/ARC of data (bytes-like), continuing from crc."""
    t = _NIBBLE
    for b in data:
        crc ^= b
        crc = (crc >> 4) ^ t[crc & 15]
        crc = (crc >> 4) ^ t[crc & 15]
    return crc
