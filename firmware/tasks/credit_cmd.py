# The credit task's head-end commands (tasks/credit.py): TOPUP, TARIFF, PREPAID and CREDIT.
# Part of that task, in its own file so that its code is in RAM only while a command runs
# (lib/lazy.py): the task's per-second accounting stays in tasks/credit.py. Each function
# takes the Credit object, the sender and the payload; each command, valid or refused, is
# logged in the security log.
import json
from micropython import const

MAX_TOPUP_MC = const(100000000)  # 1000.00 in one top-up
MAX_PRICE_MC = const(10000000)  # 100.00 per kWh
_TARIFF_KEYS = ("t1_mc_kwh", "t2_mc_kwh", "t2_from_h", "t2_to_h", "tz_s", "eu_dst",
                "weekend_t1")


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
