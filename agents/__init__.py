"""Faust wiring: the app factory and its agents. Logic lives in ``parcel_stream``."""
