"""The ZIMRA FDMS simulator: HTTPS with mutual TLS and its own test CA, every device endpoint, receipt
validation colours (judge.py), asynchronous close and offline files, fault injection and an admin port.

Start it in-process with `FdmsSimulator(Scenario.default()).start()` (see server.py), or as a process with
`fiscalbox-sim fdms --config scenario.toml`.
"""
