"""Autopack token estimator: predicts output tokens per phase, picks budgets, learns from telemetry."""
