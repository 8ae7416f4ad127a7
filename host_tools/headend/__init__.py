"""The head-end: the host's side of the WAN protocol (docs/PROTOCOL.md)."""
