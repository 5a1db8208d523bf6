"""g3: worldwide image geolocalization with retrieval-augmented large multimodal models (G3)."""

__version__ = "0.1.0"
