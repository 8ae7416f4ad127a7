# The metrology task's rare head-end requests (tasks/metrology.py): PROFILE and CALIBRATE.
# Part of that task, in its own file so that its code is in RAM only while a request runs
# (lib/lazy.py); sampling, the energy registers and READ stay in tasks/metrology.py.
# Each function takes the Metrology object, the sender and the payload.
import json
import struct

import metro
import store
from tasks.metrology import _REC, CALIB


def profile(m, sender, payload):
    ref, from_seq, max_n = payload
    recs = []
    for seq, data in m._profile.records(from_seq, max_n):
        recs.append([seq] + list(struct.unpack(_REC, data)))
    nxt = recs[-1][0] + 1 if recs else from_seq
    body = json.dumps({"records": recs, "next": nxt, "last": m._profile.last_seq})
    m._port.send(sender, "profile_data", (ref, 0, body))


def calibrate(m, sender, payload):
    ref, volts, amps, pf = payload
    r = m.last
    if r is None or r[0] <= 0 or r[1] <= 0:
        m._port.send(sender, "calibrated", (ref, 6, "no load measured yet"))
        return
    v_gain, i_gain, phase = metro.calibrate(
        r[0], r[1], r[4], volts, amps, pf, m.cal[0], m.cal[1], m.cal[2],
        m._rate, r[5] or 50.0)
    m.cal = (v_gain, i_gain, phase)
    m._acc.set_cal(v_gain, i_gain, phase)
    store.save(CALIB, list(m.cal))
    m._port.log("calibrated: v_gain %.6g i_gain %.6g phase %.4f" % m.cal)
    body = json.dumps({"v_gain": v_gain, "i_gain": i_gain, "phase": phase})
    m._port.send(sender, "calibrated", (ref, 0, body))
