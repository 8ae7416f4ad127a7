# The credit task's head-end commands (tasks/credit.py): TOPUP, TARIFF, PREPAID and CREDIT,
# and its making at boot. Part of that task, in its own file so that its code is in RAM only
# while a command runs (lib/lazy.py): the task's per-second accounting stays in
# tasks/credit.py. Each command takes the Credit object, the sender and the payload; each
# command, valid or refused, is logged in the security log.
import json
from micropython import const

import store

MAX_TOPUP_MC = const(100000000)  # 1000.00 in one top-up
MAX_PRICE_MC = const(10000000)  # 100.00 per kWh
_TARIFF_KEYS = ("t1_mc_kwh", "t2_mc_kwh", "t2_from_h", "t2_to_h", "tz_s", "eu_dst",
                "weekend_t1")


def init(self, hw, state_path, default_tariff):
    # Credit's state, made once at boot (its file and default tariff: credit.STATE and
    # DEFAULT_TARIFF)
    self._path = hw.get("state_path", state_path)
    st = store.load(self._path, None) or {}
    self.prepaid = bool(st.get("prepaid", False))
    self.balance = int(st.get("balance", 0))  # mc
    self._rem = int(st.get("rem", 0))  # price x Wh below one mc
    self.tariff = tuple(st.get("tariff", default_tariff))
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


def _refuse(c, sender, ref, text):
    c._port.log(text)
    c._port.send(sender, "credit_data", (ref, 6, text))


def credit_read(c, sender, payload):
    ref = payload[0]
    tr = {}
    for k in range(7):
        tr[_TARIFF_KEYS[k]] = c.tariff[k]
    s = c._relay
    body = {"prepaid": c.prepaid, "balance_mc": c.balance, "tariff": tr,
            "tariff_now": c.now_tariff,
            "registers_wh": {"import_t1": c.reg[0], "import_t2": c.reg[1],
                             "export_t1": c.reg[2], "export_t2": c.reg[3]},
            "relay": None if s is None else {"relay": s[0], "armed": s[1], "locked": s[2]},
            "disconnect_asked": c._exhausted}
    c._port.send(sender, "credit_data", (ref, 0, json.dumps(body)))


def topup(c, sender, payload):
    ref, amount = payload
    if not 0 < amount <= MAX_TOPUP_MC:
        _refuse(c, sender, ref, "topup %d refused: out of range" % amount)
        return
    c.balance += amount
    c._save(c._t)
    c._port.log("topup +%d mc: balance %d" % (amount, c.balance))
    if c.balance > 0:
        c._exhausted = False
    credit_read(c, sender, payload)


def tariff(c, sender, payload):
    ref = payload[0]
    t1, t2, start_h, end_h, tz_s, eu_dst, weekend = payload[1:]
    if not (0 <= t1 <= MAX_PRICE_MC and 0 <= t2 <= MAX_PRICE_MC
            and 0 <= start_h <= end_h <= 24 and -43200 <= tz_s <= 50400):
        _refuse(c, sender, ref, "tariff refused: out of range")
        return
    c.tariff = (t1, t2, start_h, end_h, tz_s, bool(eu_dst), bool(weekend))
    c._save(c._t)
    c._port.log("tariff: T1 %d T2 %d mc/kWh %d-%dh" % (t1, t2, start_h, end_h))
    credit_read(c, sender, payload)


def prepaid(c, sender, payload):
    on = payload[1]
    c.prepaid = bool(on)
    c._save(c._t)
    c._port.log("prepaid mode %s" % ("on" if on else "off"))
    credit_read(c, sender, payload)
