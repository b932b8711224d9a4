"""Development tools: the throwaway Synapse (devserver) and ``peerbot demo``."""
