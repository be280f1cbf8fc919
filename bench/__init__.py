"""Benchmarks for clobd. Nothing here is imported by the runtime packages."""
