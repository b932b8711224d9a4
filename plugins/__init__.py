"""Plugins that ship with PeerBot, as examples to copy."""
