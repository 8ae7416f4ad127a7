"""The ADC ring's head (host_tools/sim/supervisor.py AdcRing), read by another process while the
front end writes it, as the VM's ROM reads it (board/virtual/host/rom.py adc_head): the rate,
lead and size never read as anything but theirs, and the count never goes back.

CI once saw doctor's ADC probe fail with ZeroDivisionError: struct.pack_into zeroed the head
before it packed it again, and the VM's ADC model divided by the rate it read in between."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from host_tools.sim.supervisor import ADC_HEAD, ADC_LEAD, ADC_RATE, ADC_RING, AdcRing

# A reader in its own process, reading as rom.py's adc_head does (until two reads agree), for
# as long as the file "go" exists; it prints how many reads it made and which were wrong.
READER = """
import mmap, os, struct, sys
path, go = sys.argv[1], sys.argv[2]
f = open(path, "rb")
mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
H = struct.Struct("<QIII")
reads = bad = back = 0
last = 0
RATE, LEAD, RING = (int(x) for x in sys.argv[3:6])
open(go + ".ready", "w").close()
while os.path.exists(go):
    for _ in range(1000):
        h = H.unpack_from(mm, 0)
        while True:
            h2 = H.unpack_from(mm, 0)
            if h2 == h:
                break
            h = h2
        reads += 1
        if h[1:] != (RATE, LEAD, RING):
            bad += 1
        if h[0] < last:
            back += 1
        last = h[0]
print(reads, bad, back)
"""


def test_a_reader_never_sees_the_head_half_written(tmp_path: Path) -> None:
    ring = AdcRing(str(tmp_path / "adc.bin"))
    go = tmp_path / "go"
    go.touch()
    p = subprocess.Popen([sys.executable, "-c", READER, ring.path, str(go),
                          *(str(x) for x in (ADC_RATE, ADC_LEAD, ADC_RING))],
                         stdout=subprocess.PIPE, text=True)
    try:
        while not (tmp_path / "go.ready").exists():
            assert p.poll() is None, "the reader died"
        # the count through every carry of its low bytes, as fast as the writer goes, for at
        # least half a second (a loaded host may hold the reader back for a while)
        w, until = 0, time.monotonic() + 0.5
        while w < 150_000 or time.monotonic() < until:
            w += 1
            ring.written = w
            ring._head()
    finally:
        go.unlink()
        out, _ = p.communicate(timeout=30)
    reads, bad, back = (int(x) for x in out.split())
    assert reads >= 1000, out
    assert bad == 0, f"{bad} of {reads} reads saw a rate, lead or size not theirs"
    assert back == 0, f"{back} of {reads} reads saw the count go back"
    assert ADC_HEAD.unpack_from(ring.mm, 0) == (w, ADC_RATE, ADC_LEAD, ADC_RING)
