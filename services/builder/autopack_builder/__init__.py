"""Autopack Builder: phase + context + budget -> file operations, every LLM token accounted."""
