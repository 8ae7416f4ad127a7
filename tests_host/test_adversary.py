"""The adversarial head-end's arithmetic (host_tools/headend/lopa/adversary.py) on the host:
ghost members unmask a reading exactly from what a meter would send (the meter's side made
with the reference math, independently), the four-subset differencing is exact on sums without
noise, keyless frames name the chosen counter and none of them authenticates, and the lab
truth read from a virtual meter's flash is what the firmware's own ring wrote, a torn slot left
out. The device suite (tests_device/test_adversarial_headend.py) runs these against meters."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from ringlog import Ring

from host_tools.headend import wire
from host_tools.headend.lopa import adversary as adv
from host_tools.headend.lopa import ref

GID = b"ghost-test"


def _meter_side(sk: bytes, me: int, gs: list[adv.Ghost], t: int) -> int:
    """b(t) as the real meter computes it: from its own private key and the ghosts' public
    keys (the pair keys are symmetric, so the head-end gets them from the ghosts' side)."""
    keys = {g.meter_id: ref.pair_key(sk, g.pk, GID, me, g.meter_id) for g in gs}
    return ref.blinding(keys, me, GID, t)


@pytest.mark.parametrize("others", [2, 4])
def test_ghosts_unmask_a_plain_and_a_robust_reading_exactly(others: int) -> None:
    rng = random.Random(others)
    sk, pk = ref.keypair(rng.randbytes(32))
    me = 1000 + others
    gs = adv.ghosts(others, [me])
    assert len({g.meter_id for g in gs} | {me}) == others + 1
    assert adv.ghost_group(me, pk, gs)[0][0] == min([me] + [g.meter_id for g in gs])
    for t in (7, 8):
        x = rng.randrange(0, 50_000)
        b = _meter_side(sk, me, gs, t)
        assert b != 0
        big_c = rng.getrandbits(32)
        plain = (x + b) & adv.MASK32
        robust = (x + b + big_c) & adv.MASK32
        assert adv.unmask(plain, me, pk, gs, GID, t) == x
        # RECOVER with S empty answers C_i itself
        assert adv.unmask(robust, me, pk, gs, GID, t, recovered=big_c) == x
        assert adv.unmask(robust, me, pk, gs, GID, t) != x  # without r: masked still


def test_four_subset_differencing_is_exact_without_noise_and_left_with_it() -> None:
    ids = [11, 22, 33, 44]
    subsets = adv.four_subsets(ids)
    assert sorted(subsets) == ids
    assert all(k not in mem and len(mem) == 3 for k, (_gid, mem) in subsets.items())
    assert len({gid for gid, _ in subsets.values()}) == 4
    x = {11: 140, 22: 0, 33: 66, 44: 90}
    sums = {k: sum(x[j] for j in mem) & adv.MASK32 for k, (_g, mem) in subsets.items()}
    assert adv.differencing(sums) == {k: float(v) for k, v in x.items()}
    # each sum 5000 low (so below zero: read as signed), and every estimate is left
    # 5000 - 4 * 5000 / 3 = -5000/3 off
    noisy = {k: (v - 5000) & adv.MASK32 for k, v in sums.items()}
    assert adv.differencing(noisy) == pytest.approx({k: v - 5000 / 3 for k, v in x.items()})
    with pytest.raises(ValueError, match="four distinct"):
        adv.four_subsets([1, 2, 3])


def test_keyless_frames_name_the_counter_and_none_authenticates() -> None:
    keys = wire.Keys.derive(4242, bytes(range(32)))
    frames = adv.keyless_frames(4242, 777, wire.K_TOPUP)
    assert len(frames) == 6
    for f in frames:
        assert int.from_bytes(f[11:15], "big") == 777 and f[1] == wire.K_TOPUP
        with pytest.raises(wire.WireError):
            wire.open_frame(keys, False, f)
    # a genuine frame of the same fields does authenticate (the check above can fail)
    genuine = wire.seal(keys, False, wire.K_TOPUP, 777, 0, b"{}")
    assert wire.open_frame(keys, False, genuine).ctr == 777


def test_lab_truth_from_flash_is_what_the_firmwares_ring_wrote(tmp_path: Path) -> None:
    path = tmp_path / "fs" / "data" / "profile.bin"
    path.parent.mkdir(parents=True)
    ring = Ring(str(path), 192, adv.PROFILE_REC)
    for t in range(100, 106):
        ring.append(struct.pack(">IIIII", (t + 1) * 2, t * 3, 0, 0, 0))
    raw = bytearray(path.read_bytes())
    raw[2 * adv.PROFILE_REC + 8] ^= 1  # the third record (t 102) torn
    path.write_bytes(bytes(raw))
    assert adv.lab_readings(tmp_path, 2) == {t: t * 3 for t in (100, 101, 103, 104, 105)}
    assert adv.profile_from_flash(tmp_path)[(105 + 1) * 2] == 315
