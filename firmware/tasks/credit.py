# Prepaid credit and time-of-use tariffs (seed 002 §4.3.4 "smart billing", §4.5 memory
# segments "the tariffs, the credit balance and the prepaid flag"). This task owns them, in
# one atomically persisted record (/data/credit.json).
#
# - Each second metrology's reading (t, V, I, P, import Wh, export Wh) comes in; the new
#   import/export Wh go to the tariff registers of the tariff in force (1 low, 2 normal),
#   and, in prepaid mode, the imported energy's cost comes off the balance (integers:
#   money in milli-cents, "mc"; prices in mc per kWh; the sub-mc remainder carries).
# - Top-up, tariff and prepaid-mode updates arrive as authenticated head-end commands
#   (cs_security verified them); each one, valid or refused, is logged in the security log.
# - At zero credit in prepaid mode, it asks the off-switch for a local disconnect
#   ("credit_disconnect", logged); it cannot drive the relay, and it cannot reconnect: after a
#   top-up the central system sends an authenticated reconnect, confirmed by the button.
# - Each second it gives the HAN the tariff indicator and the four tariff registers.
#
# Persistence (flash wear: docs/hardware.md): with battery-backed RAM (hw["nvram"]: a
# lib/nvrec.py Record) the balance and the tariff registers go there each second they change,
# and the whole record to flash on each command, at zero credit and once a day (where meter.py
# gives the RAM's snapshots, the snapshot is that daily copy); without, to flash at most every
# SAVE_EVERY_S. The flash copy holds the RAM record's seq when written
# ("g"): the boot takes the newer (the tariffs and the prepaid flag only change by commands,
# which always reach the flash). The RAM record ("<qi6q"): balance, remainder, the four tariff
# registers, metrology's import and export Wh last accounted.
from micropython import const

import lazy
import store

import dsmr

STATE = "/data/credit.json"
SAVE_EVERY_S = const(60)  # without nvram: the balance is persisted at most this often
_FLUSH_S = const(86400)  # with nvram: to flash once a day (and on each command)
RETRY_S = const(30)  # a refused (rate-limited) disconnect is asked for again this often
_NOT_IN_NV = const(1)  # self._dirty: a change not yet in the battery-backed RAM
_NOT_ON_FLASH = const(2)  # ... not yet on flash
# (T1 price, T2 price, T2 from hour, T2 to hour, UTC offset s, EU summer time, weekend T1)
DEFAULT_TARIFF = (21000, 25000, 7, 23, 3600, True, True)


def tariff_at(tariff, t):
    """The tariff in force at Unix time t: 2 (normal) on weekdays from T2-from to T2-to local
    time, else 1 (low); all weekend with weekend_t1."""
    _, _, start_h, end_h, tz_s, eu_dst, weekend_t1 = tariff
    local = t + tz_s + (3600 if eu_dst and dsmr.eu_summer(t) else 0)
    days = local // 86400
    if weekend_t1 and (days + 4) % 7 in (0, 6):  # 1970-01-01 was a Thursday; 0 = Sunday
        return 1
    hour = local % 86400 // 3600
    return 2 if start_h <= hour < end_h else 1


class Credit:
    def __init__(self, port, hw):
        self._port = port
        self._path = hw.get("state_path", STATE)
        st = store.load(self._path, None) or {}
        self.prepaid = bool(st.get("prepaid", False))
        self.balance = int(st.get("balance", 0))  # mc
        self._rem = int(st.get("rem", 0))  # price x Wh below one mc
        self.tariff = tuple(st.get("tariff", DEFAULT_TARIFF))
        self.reg = [int(x) for x in st.get("reg", (0, 0, 0, 0))]  # imp T1, T2, exp T1, T2 Wh
        last = st.get("last")  # metrology's import, export Wh when last accounted
        self._imp, self._exp = (int(last[0]), int(last[1])) if last else (-1, -1)
        self._nv = nv = hw.get("nvram")
        if nv is not None:
            g = int(st.get("g", 0))
            v = nv.load("<qi6q") if nv.seq > g else None
            if v is not None:  # newer than the flash copy: its values
                self.balance, self._rem = v[0], v[1]
                self.reg = [v[2], v[3], v[4], v[5]]
                self._imp, self._exp = v[6], v[7]
            nv.seq = max(nv.seq, g)
        self._relay = None  # (relay, armed, locked) as the off-switch last reported
        self._t = 0
        self._saved_t = 0
        self._dirty = 0  # _NOT_IN_NV | _NOT_ON_FLASH
        self._asked_t = 0
        self._exhausted = False
        self.now_tariff = 1

    # -- persistence ----------------------------------------------------------------
    def _save(self, t):
        # the whole record to flash (and to the RAM first, so that both hold the same seq)
        g = 0
        if self._nv is not None:
            self._keep()
            g = self._nv.seq
        store.save(self._path, {"prepaid": self.prepaid, "balance": self.balance,
                                "rem": self._rem, "tariff": list(self.tariff), "reg": self.reg,
                                "last": [self._imp, self._exp] if self._imp >= 0 else None,
                                "g": g})
        self._saved_t = t
        self._dirty = 0

    def _keep(self):
        # the balance and registers to battery-backed RAM only: no flash
        r = self.reg
        self._nv.save("<qi6q", self.balance, self._rem, r[0], r[1], r[2], r[3], self._imp,
                      self._exp)
        self._dirty &= ~_NOT_IN_NV

    # -- each second ------------------------------------------------------------------
    def _reading(self, r):
        t, _v, _i, _p, imp, exp = r
        if t <= 0:
            return
        self._t = t
        tr = tariff_at(self.tariff, t)
        self.now_tariff = tr
        if self._imp < 0:
            self._imp, self._exp = imp, exp
        d_imp, d_exp = imp - self._imp, exp - self._exp
        # Registers going back mean metrology lost an unfinished interval in a power cut:
        # start again from where it is (nothing is charged twice, nothing negative).
        self._imp, self._exp = imp, exp
        if d_imp > 0:
            self.reg[tr - 1] += d_imp
            if self.prepaid:
                self._rem += d_imp * self.tariff[tr - 1]
                self.balance -= self._rem // 1000
                self._rem %= 1000
            self._dirty = _NOT_IN_NV | _NOT_ON_FLASH
        if d_exp > 0:
            self.reg[tr + 1] += d_exp
            self._dirty = _NOT_IN_NV | _NOT_ON_FLASH
        self._port.send("han", "tariff_state", (tr, self.reg[0], self.reg[1], self.reg[2],
                                                self.reg[3]))
        self._check(t)
        if self._dirty and t - self._saved_t >= (SAVE_EVERY_S if self._nv is None
                                                 else _FLUSH_S):
            if self._nv is not None and self._nv.snaps is not None:
                # the daily flash copy of the balance and registers is the RAM's snapshot
                # (lib/nvrec.py), which the clock takes once a day and the staged rings more
                # often: one write for every task's record. Commands still save the file.
                self._keep()
                self._saved_t = t
                self._dirty = 0
            else:
                self._save(t)
        elif self._dirty & _NOT_IN_NV and self._nv is not None:
            self._keep()

    def _connected(self):
        s = self._relay
        return s is None or s[0] or s[1]  # unknown, closed or armed

    def _check(self, t):
        if not self.prepaid or self.balance > 0:
            self._exhausted = False
            return
        if not self._connected() or t - self._asked_t < RETRY_S:
            return
        self._asked_t = t
        if not self._exhausted:
            self._exhausted = True
            self._save(t)
            self._port.log("credit: zero (%d mc): local disconnect" % self.balance)
        self._port.send("offswitch", "credit_disconnect", None)

    # -- head-end commands (tasks/credit_cmd.py, in RAM only while one runs) -------------
    def handle(self, sender, kind, payload):
        if kind == "reading":
            self._reading(payload)
        elif kind == "relay_state":
            self._relay = payload
        elif kind in ("topup", "tariff", "prepaid", "credit_read"):
            lazy.call("tasks.credit_cmd", kind, self, sender, payload)
