# Status LED: a heartbeat that shows the scheduler is alive (it blinks only
# while the kernel loop runs every task).
class Status:
    def __init__(self, port, hw):
        self._led = hw["led"]

    def step(self):
        self._led.toggle()

    def handle(self, sender, kind, payload):
        pass
