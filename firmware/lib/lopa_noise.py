# LoPA's distributed noise (DREAM section 4.1), in its own module: the meter loads it only
# for a group with noise (tasks/dc_security.py, lib/lazy.py); lib/lopa.py offers it too.
#
# Each of the N - M members that report adds n_i = round(G1 - G2), G1, G2 independent
# Gamma(shape 1/(N-M), scale lambda): the sum of N - M such differences is Laplace(lambda)
# (a Laplace variable is the difference of two exponentials, and an exponential is the sum
# of k Gamma(1/k) variables). `rnd` is a function returning a float uniform in (0, 1):
# the meter builds one on its board's entropy (uniform_u32), tests pass a seeded one.
# Floats are single precision on the RP2040 port: shares are rounded to whole mWh anyway.
_TWO_PI = 6.283185307179586


def normal(rnd):
    """A standard normal variate (Box-Muller) from two uniforms."""
    import math

    return math.sqrt(-2.0 * math.log(rnd())) * math.cos(_TWO_PI * rnd())


def gamma(shape, scale, rnd):
    """A Gamma(shape, scale) variate, shape > 0 (Marsaglia and Tsang 2000; for shape < 1
    the boost Gamma(a) = Gamma(a + 1) * U^(1/a))."""
    import math

    if shape <= 0:
        raise ValueError("gamma: shape must be > 0")
    boost = shape < 1.0
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = normal(rnd)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u = rnd()
        if math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            g = d * v
            break
    if boost:
        e = math.log(rnd()) / shape  # U^(1/a) in log space: underflows to 0, never raises
        g = g * math.exp(e) if e > -700.0 else 0.0
    return g * scale


def noise_share(n, m, lam, rnd):
    """This member's noise share n_i = round(G1 - G2), G1, G2 ~ Gamma(1/(n-m), lam);
    0 when lam is 0 (no noise). An int (may be negative): add it mod 2^32."""
    if lam <= 0:
        return 0
    k = n - m
    if k < 1:
        raise ValueError("noise: n - m must be at least 1")
    shape = 1.0 / k
    return int(round(gamma(shape, lam, rnd) - gamma(shape, lam, rnd)))


