# The virtual board's analog front end: mains voltage and load current as
# a 16-bit ADC would read them through a bias network (mid-scale = 0 V/0 A).
#
# Parameters (set from the host with `meterctl sim load`, all optional):
#   vrms (230), irms (5), pf (1.0, negative = capacitive), freq_hz (50),
#   h3 / h5 (voltage 3rd/5th harmonic, fraction of the fundamental),
#   ih3 (current 3rd harmonic), noise (ADC counts, uniform, +/-), export (0/1)
# The seed (one per meter) sets the harmonic phases and the noise, so that
# meters differ from one another and each is reproducible.
import math

V_FULL_SCALE = 400.0 * 1.4142135  # volts at ADC full scale (peak)
I_FULL_SCALE = 100.0 * 1.4142135  # amps at ADC full scale (peak)
MID = 32768


class Waveform:
    def __init__(self, seed, params, rate_hz):
        rng = _Rng(seed)
        g = params.get
        self.rate = rate_hz
        self.w = 2 * math.pi * g("freq_hz", 50.0) / rate_hz
        pf = g("pf", 1.0)
        phi = math.acos(max(-1.0, min(1.0, abs(pf))))
        self.phi = -phi if pf < 0 else phi
        sign = -1.0 if g("export", 0) else 1.0
        self.va = g("vrms", 230.0) * 1.4142135 / V_FULL_SCALE * 32767
        self.ia = sign * g("irms", 5.0) * 1.4142135 / I_FULL_SCALE * 32767
        self.h3, self.h5, self.ih3 = g("h3", 0.0), g("h5", 0.0), g("ih3", 0.0)
        self.p3 = rng.random() * 2 * math.pi
        self.p5 = rng.random() * 2 * math.pi
        self.noise = g("noise", 0)
        self._rng = rng

    def sample(self, k):
        # Sample k of the continuous stream: (V counts, I counts).
        a = self.w * k
        v = self.va * (math.sin(a) + self.h3 * math.sin(3 * a + self.p3) + self.h5 * math.sin(5 * a + self.p5))
        i = self.ia * (math.sin(a - self.phi) + self.ih3 * math.sin(3 * (a - self.phi) + self.p3))
        if self.noise:
            n = self.noise
            v += (self._rng.random() * 2 - 1) * n
            i += (self._rng.random() * 2 - 1) * n
        return _clip(int(MID + v)), _clip(int(MID + i))


class _Rng:
    # xorshift32: MicroPython's random has no per-instance generator, and the
    # front end must not disturb the firmware's own use of `random`.
    def __init__(self, seed):
        self.s = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1

    def random(self):
        s = self.s
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.s = s
        return s / 4294967296.0


def _clip(x):
    return 0 if x < 0 else (65535 if x > 65535 else x)
