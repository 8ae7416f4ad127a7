# Boot: start the meter (meter.py builds the kernel and its tasks on the board).
import meter

meter.main()
