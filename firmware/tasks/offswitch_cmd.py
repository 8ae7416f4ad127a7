# The off-switch's requests from the main core (tasks/offswitch.py Core): central-system
# commands (verified with the off-switch's own key), status and credit's local disconnect. In
# its own file so that, where the off-switch runs cooperatively (no _thread: the official
# PYBV11 build), its code is in RAM only while a request runs (lib/lazy.py); on core 1 it is
# imported at boot and kept (core 1 imports nothing). Part of that module: `self` is its Core.
from micropython import const

from tasks.offswitch import _mac, clock_diff

# as in tasks/offswitch.py (tests_host/test_offswitch.py checks the copies agree)
_CLOCK_MASK = const(0x1FFFFFFF)
_CMD_LEN = const(30)
_DATA = const(32)
_EV_CREDIT = const(9)
_EV_CREDIT_REFUSED = const(8)
_EV_NO_KEY = const(12)
_EV_REFUSED = const(13)
_HOUR_MS = const(3600000)
_K_CREDIT = const(3)
_K_STATUS = const(2)
_K_SWITCH = const(1)
_MAC_LEN = const(16)
_MSG = const(864)
_NONCE_LEN = const(8)
_OP_OFF = const(1)
_OP_ON = const(2)
_OP_STATUS = const(0)
_OP_UNLOCK = const(3)
_OUT = const(928)
_P_COMMAND = const(1)
_R_BAD_MAC = const(3)
_R_LOCKED = const(6)
_R_MALFORMED = const(1)
_R_NO_KEY = const(9)
_R_OK = const(0)
_R_RATE_LIMIT = const(5)
_R_REPLAY = const(4)
_R_TAMPER = const(7)
_R_UNKNOWN_OP = const(8)
_R_WRONG_METER = const(2)
_T_ALREADY_CLOSED = const(2)
_T_ALREADY_OPEN = const(1)
_T_ARMED = const(3)
_T_LOCKED = const(6)
_T_NOT_LOCKED = const(5)
_T_OPENED = const(0)
_T_RATE_HOUR = const(7)
_T_RATE_SPACING = const(8)
_T_TAMPER = const(9)
_T_UNKNOWN = const(10)
_T_UNLOCKED = const(4)
_VER = const(1)


def request(self, s, now):
    link = self._link
    kind, ident, n = link.inq[0][s], link.inq[1][s], link.inq[2][s]
    if kind == _K_SWITCH:
        _command(self, ident, s * _DATA, n, now)
    elif kind == _K_STATUS:
        ok = n == _NONCE_LEN
        self._answer(ident, _OP_STATUS, (_R_OK if self._keyed else _R_NO_KEY)
                     if ok else _R_MALFORMED, 0, 0, s * _DATA if ok else -1)
    elif kind == _K_CREDIT:
        # The credit task's only power: a local disconnect at zero credit.
        if self.relay or self.armed:
            limit = _rate(self, now)
            if limit:
                if self._may_log_refusal(now):
                    self._log(_EV_CREDIT_REFUSED, limit, n=self._lim[0])
            else:
                _add_op(self, now)
                self._switch(0, _EV_CREDIT)


def _add_op(self, now):
    if self._nops == len(self._ops):
        for i in range(1, self._nops):
            self._ops[i - 1] = self._ops[i]
        self._nops -= 1
    self._ops[self._nops] = now
    self._nops += 1

def _rate(self, now):
    # 0, or why a switching operation is refused now (T_RATE_*). Drops times over an hour
    # old in place.
    ops, k = self._ops, 0
    for i in range(self._nops):
        if clock_diff(now, ops[i]) < _HOUR_MS:
            ops[k] = ops[i]
            k += 1
    self._nops = k
    if k >= self._lim[0]:
        return _T_RATE_HOUR
    if k and clock_diff(now, ops[k - 1]) < self._lim[1]:
        return _T_RATE_SPACING
    return 0

def _command(self, ident, at, n, now):
    d = self._link.in_data
    hi = d[at + 10] << 8 | d[at + 11] if n == _CMD_LEN else 0
    lo = d[at + 12] << 8 | d[at + 13] if n == _CMD_LEN else 0
    op = d[at + 1] if n == _CMD_LEN else 0
    if not self._keyed:
        if self._may_log_refusal(now):
            self._log(_EV_NO_KEY)
        self._answer(ident, 0, _R_NO_KEY, 0, 0, -1)
        return
    res = _R_OK
    if n != _CMD_LEN or d[at] != _VER:
        res = _R_MALFORMED
    else:
        mid = self._meter
        for i in range(8):
            if d[at + 2 + i] != mid[i]:
                res = _R_WRONG_METER
    if res == _R_OK:
        ws, m = self._ws, _MSG
        for i in range(14):
            ws[m + i] = d[at + i]
        _mac(self._op, self._ws, 0, 14)
        diff, out = 0, _OUT
        for i in range(_MAC_LEN):  # constant time
            diff |= ws[out + i] ^ d[at + 14 + i]
        if diff:
            res = _R_BAD_MAC
        elif hi < self._ctr_hi or (hi == self._ctr_hi and lo <= self._ctr_lo):
            res = _R_REPLAY
    if res != _R_OK:
        if self._may_log_refusal(now):
            self._log(_EV_REFUSED, op, res, 1 if n == _CMD_LEN else 0, hi, lo,
                      meter_at=at + 2 if res == _R_WRONG_METER else -1)
        self._answer(ident, op, res, hi, lo, -1)
        return
    self._ctr_hi, self._ctr_lo = hi, lo  # authentic: consumed, whatever the outcome below
    res, text, num = _R_OK, 0, 0
    self._b[0], self._b[1], self._b[2] = self.relay, self.armed, self.locked
    if op == _OP_OFF or op == _OP_ON:
        limit = _rate(self, now)
        if op == _OP_ON and self.locked:
            res, text = _R_LOCKED, _T_LOCKED
        elif limit:
            res, text, num = _R_RATE_LIMIT, limit, self._lim[0]
        else:
            _add_op(self, now)
            if op == _OP_OFF:
                text = _T_OPENED if self.relay else _T_ALREADY_OPEN
                self.relay, self.armed = 0, 0
            elif self.relay:
                text = _T_ALREADY_CLOSED
            else:
                self.armed, self.deadline = 1, (now + self._lim[2]) & _CLOCK_MASK
                text, num = _T_ARMED, self._lim[2] // 1000
    elif op == _OP_UNLOCK:
        if self._tamper_in:
            res, text = _R_TAMPER, _T_TAMPER
        else:
            text = _T_UNLOCKED if self.locked else _T_NOT_LOCKED
            self.locked = 0
    else:
        res, text = _R_UNKNOWN_OP, _T_UNKNOWN
    # Stored (the counter with it) before anything moves; answered once it is.
    p = self._p  # what to answer and log once the record is stored
    p[0], p[1], p[2] = ident, op, res
    p[3], p[4] = text, num
    p[5], p[6] = hi, lo
    self._persist(_P_COMMAND)
