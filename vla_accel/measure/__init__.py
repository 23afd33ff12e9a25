"""Measurement primitives: per-stage timers, success statistics with Wilson intervals, timing reports.

The lowest room: imports nothing else of the package, so the policies can stamp their own stages."""
