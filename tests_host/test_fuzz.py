"""Fuzzing on the MicroPython VM (issue 10), the default suite's short run: 5000 inputs over
the four targets (the WAN frame parser, the CS security module's verification, the LoPA
key-distribution chunk handler, the recovery-request handler), each made by the mutator in
tests_host/fuzz_vm.py from seed corpora that the host codecs built (host_tools/fuzz).
`make fuzz` runs 100k inputs per target (FUZZ_N).

Pass: no crash (an exception other than the documented, logged refusal), no hang (each input
within its time bound), no state change from a rejected input, every rejection logged. Each
target must also show that its inputs went deep (the refusals that only a well-formed,
authentic input can reach), or the run proves nothing. The regression inputs are the bugs the
fuzzer found in the firmware.
"""

from __future__ import annotations

import json

import pytest

from host_tools.fuzz import corpus
from host_tools.fuzz.run import Figures, report, run_batch, run_target
from host_tools.headend import wire

# (target, inputs): 5000 in all; chunk is the slowest (X25519 derivations, dc_setup reloads)
SHORT = (("wan", 2000), ("verify", 1500), ("recover", 1000), ("chunk", 500))
# reasons that only inputs past the MAC (wan) or well-formed enough (DC module) can reach
DEEP = {
    "wan": ("replay ctr", "authentic, refused: wan rejected bad args", "wan bad mac"),
    "verify": ("wan bad mac", "replay ctr"),
    "recover": ("non-member", "missing > m", "no ciphertext sent for t", "names this meter"),
    "chunk": ("chunk out of order", "this meter's id with another public key",
              "commit before all members arrived"),
}


def _has(fig: Figures, needle: str) -> bool:
    return any(needle in why for why in fig.rejects)


@pytest.mark.parametrize(("target", "n"), SHORT, ids=[t for t, _ in SHORT])
def test_fuzz_target_on_the_vm(target: str, n: int) -> None:
    fig = run_target(target, n, seed=7, batch=n)
    print("\n" + report([fig]))
    assert fig.inputs == n
    assert fig.n_crashes == 0, fig.crashes
    assert fig.n_hangs == 0, fig.hangs
    assert fig.n_changes == 0, fig.changes
    assert fig.unlogged == 0
    assert fig.vm.startswith("micropython") and fig.heap_bytes <= 192 * 1024
    assert fig.rejected > n // 4
    missing = [r for r in DEEP[target] if not _has(fig, r)]
    assert not missing, f"never reached: {missing}; reasons: {dict(fig.rejects)}"
    if target == "verify":
        # no mutated or replayed frame passes; only the genuine frames, each once
        assert fig.accepted <= len(corpus.config("verify", n, 0, "", 0)["frames"])
    else:
        assert fig.accepted > 0  # valid inputs pass: the handler is really exercised


# The inputs the fuzzer found crashing cs_security (the kernel caught the exception: no
# answer, a "task error" in the log instead of a refusal), then hand-made ones of the kinds.
FOUND = [  # the frames, in hex (found when lines were base64)
    # TIME_SET {"t": 1701e40000}: int(inf) raised OverflowError (not a ValueError in
    # MicroPython); ctr 1008
    "0113004d45544552000001000003f00000000000117b2274223a20313730316534303030307de12c22ef96"
    "8e7cac4b4f723f6cd6f531",
    # PROFILE (ENC) "weekend_t1": a JSON string has no .get (AttributeError); ctr 1009
    "0111014d45544552000001000003f100000000000ce5009ff365bd33848a5bbd1abe6bf8881a11cf59ef1e"
    "cdb43ebffcd6",
]
MADE = [(wire.K_PROFILE, b"[1]"), (wire.K_LOGS, b"5"), (wire.K_TOPUP, b'"x"'),
        (wire.K_PROFILE, b'{"from": 1e400}'), (wire.K_CALIBRATE, b'{"volts": -1e400}'),
        (wire.K_TARIFF, b'{"t1_mc_kwh": 1e999, "t2_mc_kwh": 0}'), (wire.K_TIME_SET, b"null")]


def test_fuzz_findings_are_refused_and_logged() -> None:
    # the findings were sealed under the one key there was: each again under its kind's role
    lines = []
    op = wire.Keys.derive(corpus.METER_ID, corpus.MASTER)
    for h in FOUND:
        f = wire.open_frame(op, False, bytes.fromhex(h))
        keys = wire.Keys.derive(corpus.METER_ID, corpus.MASTER, wire.role_of(f.kind))
        lines.append(wire.to_line(wire.seal(keys, False, f.kind, f.ctr, 0, f.payload,
                                            f.encrypted)))
    # each under the keys of the role the meter's policy gives its kind (roles count on their
    # own: 2000 + i is above every role's counter)
    lines += [wire.to_line(wire.seal(wire.Keys.derive(corpus.METER_ID, corpus.MASTER,
                                                      wire.role_of(k)),
                                     False, k, 2000 + i, 0, p, encrypt=bool(i & 1)))
              for i, (k, p) in enumerate(MADE)]
    r = run_batch("wan", 1, 3, extra={"replay": [x.hex() for x in lines]})
    print(json.dumps(r["replayed"], indent=1))
    assert r["crashes"] == 0, r["crash_list"]
    assert len(r["replayed"]) == len(lines)
    for out in r["replayed"]:
        assert out.startswith("rejected: ") and "bad args for kind" in out, out


def test_the_time_bound_is_enforced() -> None:
    # the harness itself: with a bound below any input's time, every input is a hang
    r = run_batch("recover", 20, 5, hang_ms=-1)
    assert r["hangs"] == 20 and r["inputs"] == 20
