"""Revisions of the memory schema."""
