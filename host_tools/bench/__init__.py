"""`meterctl bench`: the paper's component tests C1–C14 and system tests S1–S4 on our meters,
beside the Elster AS300's figures (seed 000, Tables 1–4)."""
