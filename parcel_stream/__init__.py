"""parcel-stream: risk-score e-commerce small parcels as their manifests arrive."""

__version__ = "0.1.0"
