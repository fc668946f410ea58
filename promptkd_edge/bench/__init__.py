"""Benchmarks and machine checks: what this machine can run and how fast."""
