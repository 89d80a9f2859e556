"""Counts and timings, for Prometheus and statsd."""
