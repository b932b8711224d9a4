"""The pure core: decisions over small dataclasses; nothing here awaits or does I/O
(it imports only peerbot.core and peerbot.plugin_api)."""
