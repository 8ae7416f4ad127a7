# The metrology task's head-end requests (tasks/metrology.py): READ, PROFILE and CALIBRATE,
# and the profile record restored at boot. Part of that task, in its own file so that its code
# is in RAM only while a request runs (lib/lazy.py); sampling and the energy registers stay in
# tasks/metrology.py. Each request takes the Metrology object, the sender and the payload.
import json
import struct

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
    # ops (docs/PROTOCOL.md CALIBRATE): "ref" the reference load at the terminals, "set"
    # gains the head-end worked out, "show", "reset" (the board's default), "undo" (the
    # calibration before the last change; the meter keeps that one copy in calib.json)
    import metro_cal as mc  # (the math: imported here, not for every READ)

    ref, op, a, b, c, force, step = payload
    rec = m.cal_rec
    if op == "show":
        _cal_answer(m, sender, ref, rec)
        return
    if op == "ref":
        r = m.last
        if r is None or r[0] <= 0 or r[1] <= 0:
            m._port.send(sender, "calibrated", (ref, 6, "no load measured yet"))
            return
        new = mc.calibrate(r[0], r[1], r[4], a, b, c, m.cal[0], m.cal[1], m.cal[2],
                           m._rate, r[5] or 50.0)
        force = True  # the reference form has always set what it measured
    elif op == "set":
        new = (a, b, c)
        op = step
    elif op == "reset":
        new = m.cal_default
    elif rec["prev"] is None:  # undo
        m._port.send(sender, "calibrated", (ref, 7, "no earlier calibration to undo"))
        return
    else:
        new = tuple(rec["prev"])
    why = mc.cal_refusal(new, m.cal_default, force)
    if why:
        m._port.send(sender, "calibrated", (ref, 6, why))  # BAD_ARGS: nothing changed
        return
    if op == "undo":
        rec = {"cal": list(new), "prev": rec["cal"], "src": "undo", "rate": m._rate}
    else:
        src = "default" if op == "reset" else op
        rec = {"cal": list(new), "prev": rec["cal"], "src": src, "rate": m._rate}
    store.save(CALIB, rec)  # atomic: the calibration and the one before it together
    m.cal_rec = rec
    m.cal = tuple(new)
    m._acc.set_cal(new[0], new[1], new[2])
    m._port.log(mc.cal_log_line(op, new))
    _cal_answer(m, sender, ref, rec)


def _cal_answer(m, sender, ref, rec):
    cal = rec["cal"]
    body = json.dumps({"v_gain": cal[0], "i_gain": cal[1], "phase": cal[2],
                       "source": rec["src"], "previous": rec["prev"],
                       "default": list(m.cal_default), "rate_hz": m._rate})
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
