"""Fuzzing the firmware on the MicroPython VM (issue 10): the host side.

:mod:`.corpus` builds seed corpora with the host codecs (valid frames with valid MACs, LoPA
chunks and recovery requests); :mod:`.run` starts ``tests_host/fuzz_vm.py`` on the VM, where a
mutator seeded from here makes the inputs, and gathers the figures. ``make fuzz`` and
``python -m host_tools.fuzz`` run it; ``tests_host/test_fuzz.py`` runs a short version.
"""
