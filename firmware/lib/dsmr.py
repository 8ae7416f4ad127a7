# DSMR 5.0.2 P1 telegrams (the Dutch "P1 companion standard"), built from the meter's
# readings for the HAN data diode (tasks/han.py). Pure: no I/O, no state; runs unchanged on
# CPython and MicroPython, so the host tests parse what the meter sends with the PyPI
# dsmr-parser.
#
# A telegram:
#   /HSM5\2HASM-MicroPython          header: 3-letter manufacturer id, "5", identification
#   (empty line)
#   1-3:0.2.8(50)                    P1 version 5.0
#   0-0:1.0.0(YYMMDDhhmmssX)         timestamp, local time, X = S (summer) / W (winter)
#   0-0:96.1.1(hex)                  equipment identifier, the id as hex-encoded ASCII
#   1-0:1.8.1(000123.456*kWh)        energy delivered to the client, tariff 1 / 2
#   1-0:1.8.2(...)
#   1-0:2.8.1(...)                   energy delivered by the client, tariff 1 / 2
#   1-0:2.8.2(...)
#   0-0:96.14.0(0001)                tariff indicator
#   1-0:1.7.0(01.193*kW)             actual power delivered (+P) / received (-P)
#   1-0:2.7.0(00.000*kW)
#   0-0:96.3.10(1)                   breaker state: 0 disconnected, 1 connected, 2 ready
#   0-0:96.13.0(hex)                 text message, hex-encoded ASCII: the meter's state as
#                                    "key=value" words, e.g. "seal=closed" (tasks/han.py)
#   1-0:32.7.0(230.1*V)              voltage L1 (F4(1,1))
#   1-0:31.7.0(004*A)                current L1 (F3(0,0): whole amperes)
#   !ABCD                            CRC-16/ARC over "/" through "!", uppercase hex
# Every line ends in "\r\n".
from crc16 import arc

BREAKER_DISCONNECTED = 0
BREAKER_CONNECTED = 1
BREAKER_READY = 2  # armed: a remote reconnect waits for the local button


def civil(t):
    """Unix seconds -> (year, month, day, hour, minute, second), proleptic Gregorian.
    Independent of the port's time epoch (the boards' differ)."""
    days, s = divmod(t, 86400)
    # H. Hinnant's civil_from_days
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    return y, m, d, s // 3600, s // 60 % 60, s % 60


def _days(y, m, d):
    # days since 1970-01-01 of a civil date (inverse of civil())
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _last_sunday(y, m):
    # day of month of the last Sunday of month m (March or October: 31 days)
    d = 31
    wd = (_days(y, m, d) + 4) % 7  # 1970-01-01 was a Thursday; 0 = Sunday
    return d - wd


def eu_summer(t):
    """True while EU summer time is in force at Unix time t (last Sunday of March 01:00 UTC
    to last Sunday of October 01:00 UTC)."""
    y = civil(t)[0]
    start = _days(y, 3, _last_sunday(y, 3)) * 86400 + 3600
    end = _days(y, 10, _last_sunday(y, 10)) * 86400 + 3600
    return start <= t < end


def timestamp(t, tz_s=3600, eu_dst=True):
    """The P1 timestamp YYMMDDhhmmssX for Unix time t: local time at UTC offset tz_s (plus one
    hour in EU summer time when eu_dst), X = "S" in summer time, else "W"."""
    summer = eu_dst and eu_summer(t)
    y, m, d, hh, mm, ss = civil(t + tz_s + (3600 if summer else 0))
    return "%02d%02d%02d%02d%02d%02d%s" % (y % 100, m, d, hh, mm, ss, "S" if summer else "W")


def _kwh(wh):
    # F9(3,3): 000123.456 kWh from whole Wh
    wh = max(0, int(wh)) % 1000000000
    return "%06d.%03d" % (wh // 1000, wh % 1000)


def _kw(w):
    # F5(3,3): 01.193 kW from W, clamped to the field
    w = min(99999, max(0, int(round(w))))
    return "%02d.%03d" % (w // 1000, w % 1000)


def equipment_hex(ident):
    """The equipment identifier as P1 carries it: ASCII, hex-encoded (at most 96 digits)."""
    # bytes.hex(), not binascii: an import in a function that runs each second looks for the
    # module on the filesystem each time (docs/BENCH-sim.md, "Idle cost")
    return ident.encode()[:48].hex().upper()


# The telegram piece by piece, a line or two each: a meter writes each piece as it comes and runs
# the CRC over them (crc16.arc's crc argument), so that it needs no telegram-sized string, nor
# the 512-byte buffer formatting one grows through: on a fragmented heap (a Pyboard's, after
# its boot) no free block may be that large, while a line's always fits. A plain function
# that calls out(piece): a generator's state would be one more heap block of ~240 bytes.
_TAIL = "1-0:32.7.0(%05.1f*V)\r\n1-0:31.7.0(%03d*A)\r\n!"


def emit(out, t, equipment, imp1_wh, imp2_wh, exp1_wh, exp2_wh, tariff, power_w, vrms, irms,
         breaker=None, tz_s=3600, eu_dst=True, text=None):
    """telegram()'s text from "/" through "!" (its CRC line left out), piece by piece: out(str)
    for each."""
    out("/HSM5\\2HASM-MicroPython\r\n\r\n1-3:0.2.8(50)\r\n")
    out("0-0:1.0.0(%s)\r\n" % timestamp(t, tz_s, eu_dst))
    out("0-0:96.1.1(%s)\r\n" % equipment_hex(equipment))
    out("1-0:1.8.1(%s*kWh)\r\n" % _kwh(imp1_wh))
    out("1-0:1.8.2(%s*kWh)\r\n" % _kwh(imp2_wh))
    out("1-0:2.8.1(%s*kWh)\r\n" % _kwh(exp1_wh))
    out("1-0:2.8.2(%s*kWh)\r\n" % _kwh(exp2_wh))
    out("0-0:96.14.0(%04d)\r\n" % tariff)
    out("1-0:1.7.0(%s*kW)\r\n" % _kw(power_w if power_w > 0 else 0))
    out("1-0:2.7.0(%s*kW)\r\n" % _kw(-power_w if power_w < 0 else 0))
    if breaker is not None:
        out("0-0:96.3.10(%d)\r\n" % breaker)
    if text is not None:
        out("0-0:96.13.0(%s)\r\n" % equipment_hex(text))
    out(_TAIL % (min(999.9, max(0.0, vrms)), min(999, max(0, int(round(irms))))))


def crc_line(crc):
    """The telegram's last line: the CRC-16/ARC of "/" through "!" (uppercase hex)."""
    return "%04X\r\n" % crc


def telegram(t, equipment, imp1_wh, imp2_wh, exp1_wh, exp2_wh, tariff, power_w, vrms, irms,
             breaker=None, tz_s=3600, eu_dst=True, text=None):
    """One complete P1 telegram (bytes), CRC included. power_w: active power, negative when
    exporting; tariff: 1 or 2; breaker: one of BREAKER_* or None to leave the line out; text:
    the text message (0-0:96.13.0, ASCII) or None to leave it out."""
    parts = []
    emit(parts.append, t, equipment, imp1_wh, imp2_wh, exp1_wh, exp2_wh, tariff, power_w, vrms,
         irms, breaker, tz_s, eu_dst, text)
    body = "".join(parts).encode()
    return body + crc_line(arc(body)).encode()
