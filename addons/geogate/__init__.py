"""geogate: enforce destination-country rules on outbound connections."""

__version__ = "0.1.0"
