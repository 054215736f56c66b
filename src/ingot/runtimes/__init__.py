"""Runtimes: where instances run."""
