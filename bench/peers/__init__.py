"""Peer-engine side of the benchmark: workload file format, adapters and the worker.

Every module in this package runs under clobd's interpreter *and* under the peers'
scratch venvs (CPython 3.11 and 3.12), so it imports nothing outside the standard
library at module level; each adapter imports its own engine lazily.
"""
