"""CheXStack: chest X-ray ML platform (streaming CheXNet inference, training and serving)."""

__version__ = "0.1.0"
