# Status LED: a heartbeat that shows the scheduler is alive (it blinks only
# while the kernel loop runs every task).


class Status:
    # Toggled every 500 ms: a 1 Hz blink, as meters' heartbeat LEDs show. A multiple of
    # metrology's and clock's 100 ms (meter.py), so the kernel runs it in a pass it makes
    # for them anyway (kernel.py keeps every step on its grid): it costs no wake-up of its
    # own (at 250 ms it cost two a second, and on the virtual board each toggle is a message
    # the supervisor wakes for).
    PERIOD_MS = 500

    def __init__(self, port, hw):
        self._led = hw["led"]

    def step(self):
        self._led.toggle()

    def handle(self, sender, kind, payload):
        pass
