"""The live proxy: the mitmproxy addon and what it needs around the engine (flows, DNS, reload, log).

The file mitmproxy loads is geogate/addon.py, which puts this addon together with the audit of
replayed flows.
"""
