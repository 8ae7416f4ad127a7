# WAN protocol v1 codec (docs/PROTOCOL.md) for MicroPython and CPython.
#
# Pure codec: no I/O and no counter state. The caller reads lines from the
# serial port, turns them into frames (line_to_frame; the meter's comm task in place in its
# line buffer: line_span, unescape_into), opens them (open_frame), checks the counter
# against its own high-water mark, and seals and writes the answer (seal, write_line).
#
# Frame (big-endian): ver u8 | kind u8 | flags u8 | meter u64 | ctr u32 |
# ref u32 | len u16 | payload | mac (16 = HMAC-SHA256(k_mac_dir, all before)[:16]).
# flags: ENC 0x01, RESP 0x02, the role (policy.py WAN_ROLES) in bits 2-3; the role picks the
# keys, and the MAC covers it. Keys: HKDF-SHA256(ikm=K, salt=meter id u64 BE,
# info=b"wan <dir> <use>"), K the master for the operator (role 0) and
# HKDF-SHA256(master, meter id, b"wan role <name>") for the others (role_master).
# ENC: AES-128-CTR, initial counter block meter(8) | ctr(4) | 00000000. The AES is
# cryptolib's, or lib/aes128.py's where the build has no cryptolib (loaded for each frame).
#
# RAM: one preallocated 64-byte buffer holds 4 counter blocks at a time, which are encrypted
# in place into the key stream (one ECB call) and XORed with the data into the result: the
# result is the only allocation. The buffer makes seal/open non-reentrant (the firmware is
# single-threaded).
# struct is imported once, here: a function's `import struct` searches every
# sys.path entry of the board's filesystem before it falls back to the built-in (an extensible
# module: py/builtinimport.c process_import_at_level, v1.28.0), which cost each frame about
# 2 ms on the virtual Pico's littlefs (docs/BENCH-sim.md, "WAN round trip").
import struct

import hmac_sha256 as _h

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):  # type: ignore[misc]  # the CPython stand-in
        return x


try:
    # MicroPython's AES (C); on CPython (the host's tests) host_tools/mpcompat.py's
    from cryptolib import aes as _aes
except ImportError:  # no cryptolib in the build (the official PYBV11 firmware): the same
    # AES-128 in MicroPython (lib/aes128.py), slower, the same frames. Its code (~2.5 KB of
    # heap with its S-box) is in RAM only while a frame is encrypted: loaded for each one and
    # dropped after it (lib/lazy.py; docs/hardware.md "Memory").

    def _aes(key, mode):  # type: ignore[no-redef]  # cryptolib.aes's surface
        import lazy

        return lazy.call("aes128", "aes", key, mode)

# RAM: this module's globals are one dict, sized for the most names it ever held: what only
# one function uses is written in that function (formats, HKDF infos).
VER = const(1)
HEADER = const(21)
MAC_LEN = const(16)
PAYLOAD_CAP = const(1024)
LINE_CAP = const(1500)

FLAG_ENC = const(0x01)
FLAG_RESP = const(0x02)
ROLE_SHIFT = const(2)
ROLE_MASK = const(0x0C)  # flags bits 2-3: 0 operator, 1 aggregator, 2 supplier, 3 unassigned
_FLAGS_KNOWN = const(0x0F)
ROLE_OPERATOR = const(0)
ROLE_AGGREGATOR = const(1)
ROLE_SUPPLIER = const(2)
ROLE_NAMES = ("operator", "aggregator", "supplier")  # by role id

K_INFO = const(0x01)
K_READ = const(0x10)
K_PROFILE = const(0x11)
K_LOGS = const(0x12)
K_TIME_SET = const(0x13)
K_CALIBRATE = const(0x14)
K_STATS = const(0x15)
# LoPA kinds (DC security module, docs/PROTOCOL.md "LoPA kinds"); binary payloads
K_KEYGEN = const(0x20)
K_PUBKEY = const(0x21)
K_GROUP_BEGIN = const(0x22)
K_GROUP_KEYS = const(0x23)
K_GROUP_COMMIT = const(0x24)
K_CIPHERTEXT = const(0x25)
K_RECOVER = const(0x26)
K_GROUPS = const(0x27)
K_GROUP_DELETE = const(0x28)
# Off-switch and prepaid credit (docs/PROTOCOL.md "Off-switch and credit kinds")
K_SWITCH = const(0x30)
K_SWITCH_STATUS = const(0x31)
K_TOPUP = const(0x32)
K_TARIFF = const(0x33)
K_CREDIT = const(0x34)
K_PREPAID = const(0x35)
# Sealing (docs/PROTOCOL.md "Seal kinds"): close / open the REPL over the WAN's USB serial
K_SEAL = const(0x40)
K_UNSEAL = const(0x41)
K_ERROR = const(0x7F)

# responses to these kinds carry personal data and must be sealed with encrypt=True
ENC_RESPONSE_KINDS = (K_READ, K_PROFILE, K_LOGS)
# (the LoPA kinds are all answered by the DC security module; every response is ENC except
# KEYGEN/PUBKEY's, a public key: tasks/cs_security.py's routes)

E_MALFORMED = const(1)
E_TOO_BIG = const(2)
E_REPLAY = const(3)
E_UNKNOWN_KIND = const(4)
E_POLICY = const(5)
E_BAD_ARGS = const(6)
E_FAILED = const(7)
E_NOT_PROVISIONED = const(8)

# a meter without a master key seals NOT_PROVISIONED with the keys of this one (public)
UNPROVISIONED_MASTER = bytes(32)

_U32_MAX = const(0xFFFFFFFF)

# Lines (docs/PROTOCOL.md "Lines"): a frame travels as "~" + its bytes + "\n", each byte as it
# is except these, which travel as ESC + (byte XOR 0x40): the line end, CR (a terminal's line
# end, stripped at a line's end), Ctrl-A..Ctrl-E (mpremote's raw-REPL keys; Ctrl-C interrupts
# the VM) and ESC itself. Cost on random bytes: 8/256 = 3.1 % (base64: 33 %).
_ESC = const(0x1B)
_ESC_XOR = const(0x40)
_pair = bytearray(b"\x1b\x00")  # an escaped byte's pair, as write_line writes it


# counter blocks, then (in place) key stream: 4 blocks of 16 bytes at a time
_KS = const(64)
_ks_buf = bytearray(_KS)


class WanError(Exception):
    """A frame or line that cannot be accepted.

    code: one of the E_* (what is wrong), or 0 when silent.
    silent: True when the meter must not answer (wrong MAC, meter id, direction).
    ref: the frame's ctr when the frame was long enough to carry one, else 0.
    authentic: True when the frame's MAC verified (the checks after it). Only then may the
    meter answer with code, bound to ref: the ref of a frame that did not verify is the
    sender's choice (docs/SECURITY.md, "The WAN: answers and counters").
    """

    def __init__(self, code, message, silent=False, ref=0, authentic=False):
        super().__init__(message)
        self.code = 0 if silent else code
        self.silent = silent
        self.ref = ref
        self.authentic = authentic


def derive_keys(meter_id, master):
    """(k_down_mac, k_up_mac, k_down_enc, k_up_enc) for one meter's 32-byte master key."""
    if len(master) != 32:
        raise ValueError("wan: master key must be 32 bytes")
    if meter_id < 0 or meter_id > 0xFFFFFFFFFFFFFFFF:
        raise ValueError("wan: meter id must be a u64")
    salt = meter_id.to_bytes(8, "big")
    return (
        _h.hkdf_sha256(master, salt, b"wan down mac", 32),
        _h.hkdf_sha256(master, salt, b"wan up mac", 32),
        _h.hkdf_sha256(master, salt, b"wan down enc", 16),
        _h.hkdf_sha256(master, salt, b"wan up enc", 16),
    )


def role_master(meter_id, master, role):
    """The 32-byte key role `role` derives its WAN keys from: the master itself for the
    operator (so the operator's frames are those of protocol v1 before roles), else a one-way
    HKDF of it, so that the aggregator's or the supplier's key gives neither the master nor
    another role's key."""
    if role == ROLE_OPERATOR:
        return master
    if not 0 < role < len(ROLE_NAMES):
        raise ValueError("wan: unknown role")
    return _h.hkdf_sha256(master, meter_id.to_bytes(8, "big"),
                          b"wan role " + ROLE_NAMES[role].encode(), 32)


def frame_role(frame):
    """The role id a frame's header claims (not yet authenticated: it only picks the keys
    that the MAC is then checked with), or -1 when the frame is too short to say."""
    if len(frame) < 3:
        return -1
    return (frame[2] & ROLE_MASK) >> ROLE_SHIFT


def ct_equal(a, b):
    """a == b without an early exit (lengths are not secret)."""
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):
        acc |= a[i] ^ b[i]
    return acc == 0


def _ctr_xor(key, meter_id, ctr, data, out=None, at=0):
    """AES-128-CTR of data (<= PAYLOAD_CAP bytes) -> bytes; or, with ``out`` (a bytearray),
    written into out[at:at + len(data)] and None returned (no allocation at all)."""
    n = len(data)
    if n == 0:
        return None if out is not None else b""
    buf = _ks_buf
    aes = _aes(key, 1)
    if out is None:
        out = bytearray(n)
        at = 0
        res = out
    else:
        res = None
    # _KS bytes of key stream at a time: the counter blocks, encrypted in place
    for o in range(0, n, _KS):
        m = n - o if n - o < _KS else _KS
        nb = (m + 15) >> 4
        for i in range(nb):
            struct.pack_into(">QII", buf, i << 4, meter_id, ctr, (o >> 4) + i)
        blocks = memoryview(buf)[: nb << 4]
        aes.encrypt(blocks, blocks)
        for i in range(m):
            out[at + o + i] = buf[i] ^ data[o + i]
    for i in range(_KS):
        buf[i] = 0  # no key stream left in a buffer that any importer could read
    return None if res is None else bytes(res)


def seal(keys, meter_id, up, kind, ctr, ref, payload, encrypt=False, role=0):
    """One frame (a bytearray: on the meter the frame is the only allocation here; it is
    encrypted straight into it). up=True: a response (RESP flag, up keys); up=False: a
    command (down keys). keys: role `role`'s (an answer goes under the command's role)."""
    n = len(payload)
    if n > PAYLOAD_CAP:
        raise WanError(E_TOO_BIG, "wan: payload over cap", ref=ref)
    if not 0 < ctr <= _U32_MAX:
        raise ValueError("wan: ctr must be 1..2^32-1")
    if not 0 <= ref <= _U32_MAX or (ref and not up):
        raise ValueError("wan: bad ref")
    if not 0 <= kind <= 0xFF:
        raise ValueError("wan: bad kind")
    if not 0 <= role < len(ROLE_NAMES):
        raise ValueError("wan: bad role")
    if up:
        mac_key, enc_key, flags = keys[1], keys[3], FLAG_RESP
    else:
        mac_key, enc_key, flags = keys[0], keys[2], 0
    if encrypt:
        flags |= FLAG_ENC
    flags |= role << ROLE_SHIFT
    end = HEADER + n
    frame = bytearray(end + MAC_LEN)
    struct.pack_into(">BBBQIIH", frame, 0, VER, kind, flags, meter_id, ctr, ref, n)
    if encrypt:
        _ctr_xor(enc_key, meter_id, ctr, payload, frame, HEADER)
    else:
        frame[HEADER:end] = payload
    frame[end:] = _h.hmac_sha256_pads(_h.hmac_pads(mac_key), memoryview(frame)[:end])[:MAC_LEN]
    return frame


def open_frame(keys, meter_id, up, frame, view=False):
    """Check and open one frame -> (kind, flags, ctr, ref, payload) with payload decrypted.

    view=True: a payload sent in clear is a memoryview into frame, not a copy (it keeps the
    frame alive: on the meter's heap one frame-sized block fewer per request).

    keys: those of the role the header claims (frame_role); the MAC, checked with them, then
    authenticates the role too (flags are in it). up=True: a response (as the head-end sees it); up=False: a command (as the meter
    sees it). Raises WanError. Counters are the caller's: this does not check
    that ctr is above the last accepted one."""
    size = len(frame)
    fctr = int.from_bytes(frame[11:15], "big") if size >= 15 else 0
    if size < HEADER + MAC_LEN:
        raise WanError(E_MALFORMED, "wan: short frame", ref=fctr)
    ver, kind, flags, fmeter, fctr, ref, n = struct.unpack_from(">BBBQIIH", frame, 0)
    if ver != VER:
        raise WanError(E_MALFORMED, "wan: bad version", ref=fctr)
    if HEADER + n + MAC_LEN != size:
        raise WanError(E_MALFORMED, "wan: len mismatch", ref=fctr)
    if n > PAYLOAD_CAP:
        raise WanError(E_TOO_BIG, "wan: payload over cap", ref=fctr)
    if fmeter != meter_id:
        raise WanError(0, "wan: wrong meter id", True, fctr)
    if bool(flags & FLAG_RESP) != bool(up):
        raise WanError(0, "wan: wrong direction", True, fctr)
    if up:
        mac_key, enc_key = keys[1], keys[3]
    else:
        mac_key, enc_key = keys[0], keys[2]
    end = HEADER + n
    mv = memoryview(frame)
    if not ct_equal(_h.hmac_sha256_pads(_h.hmac_pads(mac_key), mv[:end])[:MAC_LEN], mv[end:]):
        raise WanError(0, "wan: bad mac", True, fctr)
    if fctr == 0:
        raise WanError(E_MALFORMED, "wan: ctr 0", ref=0, authentic=True)
    if flags & ~_FLAGS_KNOWN:
        raise WanError(E_MALFORMED, "wan: reserved flags", ref=fctr, authentic=True)
    if ref and not up:
        raise WanError(E_MALFORMED, "wan: command with ref", ref=fctr, authentic=True)
    payload = mv[HEADER:end]
    if flags & FLAG_ENC:
        payload = _ctr_xor(enc_key, meter_id, fctr, payload)
    elif not view:
        payload = bytes(payload)
    return kind, flags, fctr, ref, payload


# Both directions go byte by byte in Python (about 1 ms per KB of line on a Cortex-M0+): a
# scan in C (bytes.find/count) needs each escaped byte as a bytes object, 16 constant objects
# (~0.8 KB of heap on the 64-bit VM) that the Pyboard's boot at its heap has no room for.


def line_span(line, n):
    """(start, end): where the escaped frame lies in line[:n], without the "~" and the line
    end (CRs and LFs). Raises WanError TOO_BIG when the line is over LINE_CAP characters (the
    "~" counts, present or not)."""
    end = n
    while end and line[end - 1] in (10, 13):
        end -= 1
    start = 1 if end and line[0] == 126 else 0  # "~"
    if end - start + 1 > LINE_CAP:
        raise WanError(E_TOO_BIG, "wan: line over cap")
    return start, end


def unescape_into(src, start, end, dst):
    """Unescapes src[start:end] into dst[0:] -> the frame's length. Every byte stands for
    itself except ESC, which with the byte after it (that byte XOR 0x40) stands for an escaped
    byte; only that canonical form passes (docs/PROTOCOL.md "Lines"), else WanError MALFORMED.
    dst may be src itself (the comm task's buffer: the frame replaces its line in place, as
    unescaping only shrinks, each byte is written at or before where it was read)."""
    o = 0
    esc = False
    for i in range(start, end):
        b = src[i]
        if esc:
            b ^= _ESC_XOR
            esc = False
            if b > 27 or not (0 < b < 6 or b == 10 or b == 13 or b == 27):
                raise WanError(E_MALFORMED, "wan: bad escape")  # of a byte that needs none
        elif b == _ESC:
            esc = True
            continue
        elif b < 28 and (0 < b < 6 or b == 10 or b == 13):
            raise WanError(E_MALFORMED, "wan: bad escape")  # a raw Ctrl-A..Ctrl-E, LF or CR
        dst[o] = b
        o += 1
    if esc:
        raise WanError(E_MALFORMED, "wan: bad escape")  # ESC last: a truncated escape
    return o


def line_to_frame(line):
    """b"~<escaped frame>\\r\\n" (the "~" and line end optional) -> frame (a bytearray of its
    own; the meter's comm task unescapes in place instead: line_span, unescape_into)."""
    start, end = line_span(line, len(line))
    k = 0
    for i in range(start, end):
        if line[i] == _ESC:
            k += 1
    frame = bytearray(end - start - k)
    unescape_into(line, start, end, frame)
    return frame


def write_line(frame, write):
    """Writes frame's line, "~" + the frame escaped + "\\n", through write(): runs of bytes as
    memoryview slices, each escaped byte as its pair (no line-sized buffer: the meter's comm
    task writes straight to the link). Raises WanError TOO_BIG, before writing anything, when
    the line would exceed LINE_CAP (more than LINE_CAP - 1 - len(frame) bytes to escape: never
    a ciphertext in practice)."""
    n = len(frame)
    if 2 * n >= LINE_CAP:  # it may not fit: count the bytes to escape
        k = n + 1
        for b in frame:
            if b < 28 and (0 < b < 6 or b == 10 or b == 13 or b == 27):
                k += 1
        if k > LINE_CAP:
            raise WanError(E_TOO_BIG, "wan: line over cap")
    mv = memoryview(frame)
    write(b"~")
    s = 0
    for j in range(n):
        b = frame[j]
        if b < 28 and (0 < b < 6 or b == 10 or b == 13 or b == 27):
            write(mv[s:j])
            _pair[1] = b ^ _ESC_XOR
            write(_pair)
            s = j + 1
    write(mv[s:])
    write(b"\n")


def frame_to_line(frame):
    """frame -> b"~<escaped frame>\\n" (bytes). Raises WanError TOO_BIG as write_line."""
    out = bytearray()
    write_line(frame, out.extend)
    return bytes(out)


def error_payload(code, detail=None):
    """An ERROR payload: code u8, then the detail: an int as u32 big-endian, a str as UTF-8,
    or bytes as they are (REPLAY: the highest ctr consumed, then the ctr of the last command
    that may have changed the meter, each u32 big-endian)."""
    if not 0 < code <= 0xFF:
        raise ValueError("wan: bad error code")
    if detail is None:
        return bytes((code,))
    if isinstance(detail, int):
        detail = detail.to_bytes(4, "big")
    elif isinstance(detail, str):
        detail = detail.encode()
    return bytes((code,)) + bytes(detail[: PAYLOAD_CAP - 1])


def parse_error(payload):
    """ERROR payload -> (code, detail): detail None when absent, an int for REPLAY
    (4 bytes), else the text (bytes if it is not UTF-8)."""
    if len(payload) < 1:
        raise WanError(E_MALFORMED, "wan: empty error payload")
    code = payload[0]
    rest = bytes(payload[1:])
    if not rest:
        return code, None
    if code == E_REPLAY and len(rest) == 4:
        return code, int.from_bytes(rest, "big")
    try:
        return code, rest.decode()
    except UnicodeError:
        return code, rest
