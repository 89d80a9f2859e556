"""On-demand image processing server on Twisted."""

__version__ = "0.1.0"
