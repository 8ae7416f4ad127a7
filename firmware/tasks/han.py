# HAN gateway, a data diode (seed 002 §4.5): every second it writes one DSMR 5.0.2 P1
# telegram (lib/dsmr.py) to the HAN UART, and nothing ever comes back. The board hands it
# the HAN port transmit-only (board.han_tx(): only the TX pin is set up, and the object has
# no read method); this task sends no message to any other task (policy.py has no row with
# sender "han"), so nothing a device on the HAN does can reach the meter.
#
# Its inputs, one way, through the policy: metrology's reading each second (t, V, I, P,
# import Wh, export Wh), credit's tariff registers (tariff, import T1/T2, export T1/T2 Wh),
# the off-switch's relay state (relay, armed, locked) for the breaker line.
# /data/han.json (written at provisioning): the equipment identifier and the local time.
# The seal (lib/seal.py) is shown in the text message line: "seal=closed", "seal=open", or
# "seal=open-service" after the service input behind the terminal cover unsealed it at this
# power-up (meter.py), so that the household sees it; then "consent=on" or "consent=off", the
# household's consent to the supplier reading the load profile (lib/seal.py). Both read
# from flash every SEAL_EVERY s.
from micropython import const

import seal
import store

import dsmr
from crc16 import arc

CONFIG = "/data/han.json"
SEAL_EVERY = const(8)  # telegrams between two reads of the seal (a stat: one flash read)


class Han:
    def __init__(self, port, hw):
        self._tx = hw["han_tx"]
        cfg = store.load(hw.get("config", CONFIG), None) or {}
        self._equipment = str(cfg.get("equipment", "HASM"))
        self._tz_s = int(cfg.get("tz_s", 3600))
        self._eu_dst = bool(cfg.get("eu_dst", True))
        # credit's tariff and registers (imp T1, imp T2, exp T1, exp T2), kept as ints (no
        # message object outlives its second: nothing long-lived is allocated at run time)
        self._tariff = 0
        self._i1 = self._i2 = self._e1 = self._e2 = 0
        self._breaker = None
        self._service = bool(hw.get("unsealed_by_service"))
        self._seal_text = None
        self._seal_age = SEAL_EVERY
        self.sent = 0
        self._crc = 0  # of the telegram being written
        self._out = self._piece  # bound once: no method object a second

    def _piece(self, s):
        # one piece of the telegram onto the wire, into its CRC
        b = s.encode()
        self._crc = arc(b, self._crc)
        self._tx.write(b)

    def handle(self, sender, kind, payload):
        if kind == "reading":
            self._emit(payload)
        elif kind == "tariff_state":
            self._tariff, self._i1, self._i2, self._e1, self._e2 = payload
        elif kind == "relay_state":
            relay, armed, _locked = payload
            self._breaker = (dsmr.BREAKER_CONNECTED if relay else
                             dsmr.BREAKER_READY if armed else dsmr.BREAKER_DISCONNECTED)

    def _seal_state(self):
        self._seal_age += 1
        if self._seal_age >= SEAL_EVERY:
            self._seal_age = 0
            if seal.is_sealed():
                self._service = False  # sealed again since
                text = "seal=closed"
            else:
                text = "seal=open-service" if self._service else "seal=open"
            # one string a SEAL_EVERY seconds; the telegram copies it anyway
            self._seal_text = text + (" consent=on" if seal.consent_given() else " consent=off")
        return self._seal_text

    def _emit(self, r):
        t, vrms, irms, power_w, imp_wh, exp_wh = r
        if t <= 0:
            return  # no time yet: a telegram must carry one
        text = self._seal_state()
        # written piece by piece, the CRC run over them: no telegram-sized buffer (lib/dsmr.py)
        self._crc = 0
        if self._tariff:
            dsmr.emit(self._out, t, self._equipment, self._i1, self._i2, self._e1, self._e2,
                      self._tariff, power_w, vrms, irms, self._breaker, self._tz_s,
                      self._eu_dst, text)
        else:  # credit has not reported yet: everything on tariff 1
            dsmr.emit(self._out, t, self._equipment, imp_wh, 0, exp_wh, 0, 1, power_w, vrms,
                      irms, self._breaker, self._tz_s, self._eu_dst, text)
        self._tx.write(dsmr.crc_line(self._crc).encode())
        self.sent += 1
