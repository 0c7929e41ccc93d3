"""Autopack memory service: vector collections, an embedding cache and context selection."""
