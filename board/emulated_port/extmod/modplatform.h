// Stand-in for MicroPython's extmod/modplatform.h, which the registry sdist lacks:
// py/modsys.c and shared/runtime/pyexec.c include it but this port uses none of it.
