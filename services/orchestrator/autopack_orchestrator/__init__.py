"""Autopack orchestrator: stores runs and executes their phases across the other four services."""
