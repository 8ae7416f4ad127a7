# Boot: pick the board, then run the meter. (Issue 4 grows this into the
# kernel and its tasks; for now the main loop is the heartbeat LED.)
import sys
import time

import board

VERSION = "0.1.0"


def main():
    print("meter firmware %s on board %s (%s %s)" % (
        VERSION, board.NAME, sys.implementation.name, ".".join(str(v) for v in sys.implementation.version[:3])))
    led = board.led
    while True:
        led.toggle()
        time.sleep_ms(250)


main()
