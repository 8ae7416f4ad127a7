# The DC security module's privacy budget (tasks/dc_security.py; issue 18, Build 2), in force
# once the neutral registrar's anchor is installed (tasks/dc_base.py REG_FILE). Each group a
# meter releases a value in for interval t adds Laplace noise of scale lambda_g to the
# aggregate (DREAM section 4.1), which is (delta / lambda_g)-differentially private for one
# household whose interval value moves by at most delta (the registrar's sensitivity). The
# losses of one interval add up over the meter's groups (sequential composition), so the meter
# joins a group, and releases a ciphertext, only while the sum stays within epsilon_max, and
# only for groups whose lambda is at least lambda_min. In its own file, in RAM only for the
# check (lib/lazy.py). Refusals raise Refused before any state changes.
import struct
from micropython import const

from tasks.dc_base import Refused, _hex

_E_BAD_ARGS = const(6)
_E_FAILED = const(7)
_SLACK = 1.0001  # single-precision floats on a Cortex-M: 4 x 0.25 may not sum to exactly 1


def policy(reg):
    # (min_n, lambda_min, epsilon_max, delta) from the anchor
    return struct.unpack_from(">Hfff", reg, 32)


def spent(dc, delta, skip=None):
    # the privacy loss per interval of the committed groups (all release every interval)
    e = 0.0
    for gid, g in dc._groups.items():
        if gid != skip:
            e += delta / g.lam if g.lam > 0 else 1.0e30
    return e


def join(dc, gid, lam):
    # GROUP_BEGIN: this group's loss on top of the others' (a group set up again replaces its
    # old self) must fit in epsilon_max
    min_n, lam_min, eps_max, delta = policy(dc._reg)
    for g in dc._groups.values():
        if g.gid != gid and g.lam < lam_min:  # made before the anchor: its loss is unbounded
            raise Refused(_E_BAD_ARGS, "privacy budget: group %s has lambda %g below %g "
                          "(delete it first)" % (_hex(g.gid), g.lam, lam_min))
    need = delta / lam
    used = spent(dc, delta, gid)
    if used + need > eps_max * _SLACK:
        raise Refused(_E_BAD_ARGS, "privacy budget: epsilon %g of %g in use, the group needs %g"
                      % (used, eps_max, need))


def release(dc, g):
    # CIPHERTEXT: the group's noise is at least lambda_min, and the interval's loss over all
    # groups within epsilon_max (a policy lowered since the groups were made holds here)
    if not dc._reg:
        raise Refused(_E_FAILED, "the registrar's anchor is unreadable")
    min_n, lam_min, eps_max, delta = policy(dc._reg)
    if g.lam < lam_min:
        raise Refused(_E_FAILED, "lambda %g below the registrar's minimum %g" % (g.lam, lam_min))
    used = spent(dc, delta)
    if used > eps_max * _SLACK:
        raise Refused(_E_FAILED, "privacy budget: the groups need epsilon %g, the policy "
                      "allows %g" % (used, eps_max))
