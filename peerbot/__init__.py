"""PeerBot: a Matrix bot for professional peer-help rooms."""

__version__ = "0.1.0"
