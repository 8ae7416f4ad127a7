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
import store

import dsmr

CONFIG = "/data/han.json"


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
        self.sent = 0

    def handle(self, sender, kind, payload):
        if kind == "reading":
            self._emit(payload)
        elif kind == "tariff_state":
            self._tariff, self._i1, self._i2, self._e1, self._e2 = payload
        elif kind == "relay_state":
            relay, armed, _locked = payload
            self._breaker = (dsmr.BREAKER_CONNECTED if relay else
                             dsmr.BREAKER_READY if armed else dsmr.BREAKER_DISCONNECTED)

    def _emit(self, r):
        t, vrms, irms, power_w, imp_wh, exp_wh = r
        if t <= 0:
            return  # no time yet: a telegram must carry one
        if self._tariff:
            tel = dsmr.telegram(t, self._equipment, self._i1, self._i2, self._e1, self._e2,
                                self._tariff, power_w, vrms, irms, self._breaker, self._tz_s,
                                self._eu_dst)
        else:  # credit has not reported yet: everything on tariff 1
            tel = dsmr.telegram(t, self._equipment, imp_wh, 0, exp_wh, 0, 1, power_w, vrms,
                                irms, self._breaker, self._tz_s, self._eu_dst)
        self._tx.write(tel)
        self.sent += 1
