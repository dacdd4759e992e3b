"""Benchmarks: commands that print tables, not tests."""
