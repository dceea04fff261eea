"""pathguard: runtime governance for AI agents."""
