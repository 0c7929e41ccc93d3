"""Autopack Applier: isolated git workspaces per run, scoped all-or-nothing apply, checks, rollback."""
