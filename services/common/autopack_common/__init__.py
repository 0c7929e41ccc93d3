"""Shared chassis of the Autopack services: what every service needs and nothing more."""
