# Board adapter: Raspberry Pi Pico 2 (RP2350, two Cortex-M33 at 150 MHz, 520 KB SRAM),
# MicroPython's rp2 port (v1.26-v1.28, board RPI_PICO2). Deployed as the package `board`.
#
# The Pico 2 keeps the Pico's form factor and pin map (ports/rp2/boards/RPI_PICO2/pins.csv
# and RPI_PICO/pins.csv list the same GP0..GP28 and LED = GPIO25), and the rp2 port gives
# both chips the same modules. So this adapter is the Pico's: `pico.py` here is a symbolic
# link to board/rp2_pico/__init__.py (one source, flashed as /board/pico.py), which picks the
# chip's ADC address and DREQ at run time. What differs on the RP2350 (docs/hardware.md,
# "Sampling by DMA"): ADC_BASE 0x400a0000 (RP2040: 0x4004c000), DREQ_ADC 48 (36), 16 DMA
# channels (12), the DMA control register's fields moved (rp2.DMA.pack_ctrl hides that), and
# wider CS.AINSEL/RROBIN fields (the RP2350B has 8 ADC inputs).
from .pico import *  # noqa: F403 - the whole surface, pins and all

NAME = "rp2_pico2"
