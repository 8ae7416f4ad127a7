"""The metrology hot loop in native code (firmware/lib/metro_fast.py, @micropython.viper) against
the pure path (metro._accumulate) on the MicroPython VM: the same state, word for word, after
every feed, on random and adversarial buffers; and the image carries it only where the board can
run it (host_tools/flash/build.py)."""

from __future__ import annotations

import ast
import json
from collections.abc import Callable

import metro
import pytest

from host_tools.bench.components import upload_firmware_modules
from host_tools.emu.bench import emulated_board
from host_tools.flash import build

from .test_emulated import needs_toolchain

Run = Callable[..., str]

# Runs on the VM: the same feeds through both paths (metro._fast swapped out for the pure one),
# the state array after every feed, and the results of every completed second.
_BOTH = """
import metro
from array import array
assert metro._fast is not None, 'the VM has a native emitter: the viper path must load'
fast = metro._fast

class _Rng:
    # a 32-bit LCG (the emulated boards have no random module)
    def __init__(self, seed):
        self.x = seed
    def getrandbits(self, k):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return self.x >> (31 - k)
    def randint(self, a, b):
        return a + (self.getrandbits(24) * (b - a + 1) >> 24)
    def choice(self, seq):
        return seq[self.randint(0, len(seq) - 1)]

random = _Rng({seed})
RATE = {rate}
feeds = []

def u16(x):
    return 0 if x < 0 else 65535 if x > 65535 else x

def scenario(kind, n):
    # (v, i) raw u16 samples
    v = array('H', bytes(2 * n))
    i = array('H', bytes(2 * n))
    if kind == 'random':
        for j in range(n):
            v[j] = random.getrandbits(16)
            i[j] = random.getrandbits(16)
    elif kind == 'rails':
        # full-scale square waves: every product at its largest magnitude
        for j in range(n):
            v[j] = 65535 if (j // 7) & 1 else 0
            i[j] = 0 if (j // 7) & 1 else 65535
    else:
        # export (I in anti-phase) with DC offsets far from mid-scale and noise: the sums of
        # v*i and of the shifted products go negative, so do the registers' hi words
        import math
        dv = random.randint(-9000, 9000)
        di = random.randint(-9000, 9000)
        for j in range(n):
            a = 6.283185307179586 * 50 * j / RATE
            v[j] = u16(32768 + dv + int(20000 * math.sin(a)) + random.randint(-40, 40))
            i[j] = u16(32768 + di - int(15000 * math.sin(a - 0.2)) + random.randint(-40, 40))
    return v, i

# both paths fed the same buffers, made one at a time (the VM's heap is a Pico's)
fa = metro.Accumulator(RATE, 1.0, 1.0, 0.25)
metro._fast = None
pa = metro.Accumulator(RATE, 1.0, 1.0, 0.25)
steps = 0
neg = 0
diff = []
for kind in ('export', 'random', 'rails', 'export'):
    total = 0
    while total < 2 * RATE + 123:
        n = random.choice((0, 1, 63, 64, 65, 127, 128, 129, random.randint(0, 1500)))
        v, i = scenario(kind, n)
        total += n
        metro._fast = fast
        fa.feed(v, i, n)
        metro._fast = None
        pa.feed(v, i, n)
        steps += 1
        a = list(fa._st)
        b = list(pa._st)
        neg = min(neg, a[10], a[12], a[14])
        if a != b and not diff:
            diff = [kind, a, b]
        if fa.ready() or pa.ready():
            ra, rb = fa.result(), pa.result()
            if (ra != rb or list(fa._done) != list(pa._done)) and not diff:
                diff = [kind, ra, rb]
metro._fast = fast
print(repr([not diff, steps, neg, diff]))
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_viper_and_pure_paths_leave_the_same_state_on_the_vm(micropython: Run,
                                                             seed: int) -> None:
    same, steps, neg_hi, diff = ast.literal_eval(micropython(_BOTH.format(seed=seed, rate=4000),
                                                             timeout=300))
    assert steps > 50
    # negative state words (read zero-extended by a 64-bit VM) are exercised
    assert neg_hi < 0
    assert same, diff


@needs_toolchain
def test_viper_and_pure_paths_leave_the_same_state_on_the_emulated_m0plus() -> None:
    # 32-bit machine words: a block sum that overflowed 2**31 would show here, not on the VM
    with emulated_board("m0plus", timeout=300) as (_, b):
        upload_firmware_modules(b, "armv6m", ("metro",))
        same, steps, neg_hi, diff = ast.literal_eval(
            b.exec(_BOTH.format(seed=7, rate=4000), "both paths").decode().strip())
    assert steps > 50 and neg_hi < 0
    assert same, diff


def test_cpython_runs_the_pure_path() -> None:
    assert metro._fast is None


def test_negative_state_words_survive_the_native_path(micropython: Run) -> None:
    # A hi word and a sum below zero, carried through the native path (on the 64-bit VM a
    # ptr32 load zero-extends them): they come back as they were plus what was added.
    out = micropython("""
import metro
from array import array
acc = metro.Accumulator(4000, 1.0, 1.0)
st = acc._st
st[10] = -1
st[4] = -5
v = array('H', [32768] * 10)
metro._fast(0, v, v, 10, st)
print(st[10], st[4], st[24])
""")
    assert out.split() == ["-1", "-5", "10"]


# --- the image ------------------------------------------------------------------------------

def _arch(mpy: bytes) -> int:
    # .mpy header byte 2: sub-version | arch << 2 (py/persistentcode.h; arch 0: bytecode only)
    return mpy[2] >> 2


ARMV6M, X64, ARMV7EMSP = 4, 2, 7


def test_the_image_carries_native_code_for_the_boards_arch() -> None:
    files = {f.dest: f.data for f in build.build_image("rp2_pico", "armv6m")}
    assert _arch(files["/lib/metro_fast.mpy"]) == ARMV6M
    assert _arch(files["/lib/metro.mpy"]) == 0  # everything else stays bytecode
    files = {f.dest: f.data for f in build.build_image("stm32_pybv11", "armv7emsp")}
    assert _arch(files["/lib/metro_fast.mpy"]) == ARMV7EMSP


def test_a_virtual_board_gets_its_vms_native_code_whatever_board_it_presents() -> None:
    files = {f.dest: f.data for f in build.build_image("rp2_pico", "armv6m", native_arch="x64")}
    assert _arch(files["/lib/metro_fast.mpy"]) == X64
    assert _arch(files["/lib/x25519.mpy"]) == 0


def test_a_bytecode_only_image_goes_without_native_code() -> None:
    dests = {f.dest for f in build.build_image("rp2_pico", None)}
    assert "/lib/metro.mpy" in dests and "/lib/metro_fast.mpy" not in dests
    # as source it goes: a board with a native emitter compiles it, others fall back
    dests = {f.dest for f in build.build_image("rp2_pico", None, source=True)}
    assert "/lib/metro_fast.py" in dests


def test_only_decorated_native_code_counts_as_native() -> None:
    assert build.is_native(build.FIRMWARE_DIR / "lib" / "metro_fast.py")
    # asm_thumb in a string (x25519_thumb: compiled at run time) is not
    assert not build.is_native(build.FIRMWARE_DIR / "lib" / "x25519_thumb.py")
    assert not build.is_native(build.FIRMWARE_DIR / "lib" / "metro.py")


def test_the_fallback_on_the_vm_when_the_native_module_is_of_another_arch(
        micropython: Run, tmp_path_factory: pytest.TempPathFactory) -> None:
    # an armv6m metro_fast.mpy ahead of the source on the path: the VM refuses it
    # ("incompatible .mpy arch") and metro runs the pure path with the same results
    d = tmp_path_factory.mktemp("armv6m")
    src = build.FIRMWARE_DIR / "lib" / "metro_fast.py"
    (d / "metro_fast.mpy").write_bytes(build.compile_one(src, "/lib/metro_fast.mpy", "armv6m"))
    out = micropython(f"""
import sys
sys.path.insert(0, {str(d)!r})
import metro
from array import array
acc = metro.Accumulator(4, 1.0, 1.0)
acc.feed(array('H', [40000, 30000, 20000, 30000]), array('H', [34000, 32000, 31000, 32000]), 4)
print(metro._fast, acc.result()[0] > 0)
""")
    assert out.split() == ["None", "True"]


def test_deinterleave_matches_the_rp2_adapters_python_loop(micropython: Run) -> None:
    # board/rp2_pico DmaAdc._split's work on DMA ring words (V | I << 16, 12 bits each), from
    # every offset, wrapping as read_into does; the same loop in Python is the reference
    out = micropython("""
import metro_fast
from array import array
x = 12345
ring = array('I', bytes(4 * 300))
for k in range(300):
    x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    ring[k] = (x & 0xFFF) | ((x >> 12) & 0xFFF) << 16
ring[0] = 0xFFF | 0xFFF << 16
ring[1] = 0
bad = 0
for k, a, j in ((0, 300, 0), (17, 120, 5), (299, 1, 0), (250, 50, 40)):
    v = array('H', bytes(2 * 400))
    i = array('H', bytes(2 * 400))
    metro_fast.deinterleave(k, ring, v, k + a, i, j)
    for q in range(400):
        w = ring[k + q - j] if j <= q < j + a else None
        want = (0, 0) if w is None else ((w & 0xFFF) << 4, w >> 12)
        if (v[q], i[q]) != want:
            bad += 1
print(bad, v[j], i[j])
""")
    bad, _, _ = out.split()
    assert bad == "0"


# --- calibrations across the rate change ----------------------------------------------------

_CAL_BOOT = """
import json
import tasks.metrology as tm
D = {d!r}
tm.ENERGY, tm.CALIB, tm.PROFILE = D + "/e.json", D + "/c.json", D + "/p.bin"
import tasks.metrology_cmd as mc
mc.CALIB = tm.CALIB
class Port:
    def __init__(self):
        self.out = []
        self.logs = []
    def send(self, to, kind, payload=None):
        self.out.append((to, kind, payload))
        return True
    def log(self, text):
        self.logs.append(text)
class Adc:
    def read_into(self, v, i):
        return 0
import store
store.save(tm.CALIB, {rec})
met = tm.Metrology(Port(), {{"adc": Adc(), "adc_rate_hz": 4000, "cal_default": (1.0, 1.0, 0.0)}})
out = [list(met.cal), met._acc.phase, met.cal_rec["prev"], met._port.logs]
mc.calibrate(met, "cs_security", (1, "set", 1.2, 0.9, 0.25, False, "power"))
out.append(store.load(tm.CALIB))
print(json.dumps(out))
"""


@pytest.mark.parametrize(("rec", "phase", "prev", "logged"), [
    # a calibration from before the rates went up (2 kHz, no "rate"): the same time at 4 kHz
    ({"cal": [1.1, 0.8, 0.3], "prev": [1.0, 0.9, -0.2], "src": "ref"}, 0.6, [1.0, 0.9, -0.4],
     False),
    # the older bare list, also 2 kHz
    ([1.1, 0.8, -0.25], -0.5, None, False),
    # made at 4 kHz: as it is
    ({"cal": [1.1, 0.8, 0.3], "prev": None, "src": "ref", "rate": 4000}, 0.3, None, False),
    # more than half a 2-kHz sample: beyond one 4-kHz sample, held at 1 and said so
    ({"cal": [1.1, 0.8, 0.75], "prev": None, "src": "ref"}, 1.0, None, True),
])
def test_a_stored_phase_keeps_its_time_at_the_new_rate(
        micropython: Run, tmp_path_factory: pytest.TempPathFactory, rec: object, phase: float,
        prev: object, logged: bool) -> None:
    d = tmp_path_factory.mktemp("cal")
    cal, acc_phase, got_prev, logs, saved = json.loads(
        micropython(_CAL_BOOT.format(d=str(d), rec=rec)).strip().splitlines()[-1])
    assert cal[:2] == [1.1, 0.8] and cal[2] == pytest.approx(phase)
    assert acc_phase == pytest.approx(phase)
    assert got_prev == (pytest.approx(prev) if prev else None)
    assert bool([x for x in logs if "beyond one sample" in x]) == logged, logs
    # what the meter saves next names its rate, the previous calibration converted
    assert saved["rate"] == 4000 and saved["cal"] == [1.2, 0.9, 0.25]
    assert saved["prev"][2] == pytest.approx(phase)
