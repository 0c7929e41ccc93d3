"""The ``autopack`` command line."""
