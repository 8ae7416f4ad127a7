# The metrology task's head-end requests (tasks/metrology.py): READ, PROFILE and CALIBRATE,
# and the profile record restored at boot. Part of that task, in its own file so that its code
# is in RAM only while a request runs (lib/lazy.py); sampling and the energy registers stay in
# tasks/metrology.py. Each request takes the Metrology object, the sender and the payload.
import json
import struct

import metro
import store
from tasks.metrology import _REC, CALIB

_FIELDS = ("vrms", "irms", "power_w", "apparent_va", "pf", "freq_hz")


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


def read(m, sender, payload):
    r = m.last or (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    d = {}
    for k in range(6):
        d[_FIELDS[k]] = round(r[k], 3)
    e = m.energy
    d["energy_import_wh"] = e.import_wh
    d["energy_export_wh"] = e.export_wh
    d["interval"] = {"start": m._start, "length": m._len, "index": m._idx,
                     "import_mwh": e.interval_import_mwh, "export_mwh": e.interval_export_mwh}
    d["clock"] = m._t
    d["seconds"] = m.seconds
    d["adc_gap_samples"] = m.gap_samples  # lost by the ADC since boot (metrology.py _gap)
    m._port.send(sender, "reading", (payload[0], 0, json.dumps(d)))


def restore(m, rec):
    # The record committed with the registers is the profile's last one, unless a power
    # cut came between the two writes (or tore the ring's slot): then append it now.
    last = m._profile.records(m._profile.last_seq, 1)
    if not last or tuple(struct.unpack(_REC, last[0][1])) != tuple(rec):
        m._profile.append(struct.pack(_REC, *rec))
        m._port.log("boot: restored profile record %d" % rec[0])
