"""Reliability campaigns on virtual meters (issue 10).

- :mod:`.powercut`: ``make powercut``: power cuts at random moments and at every persisted
  write point of a workload, with the meter's invariants checked after each restart;
- :mod:`.soak`: ``make soak``: a fleet on an accelerated clock, a LoPA round every interval,
  meters failing and losing power, memory and mailboxes watched;
- :mod:`.fleetup`: what both share: a fleet started, flashed and provisioned in parallel.
"""
