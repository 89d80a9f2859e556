"""Pixels, in plain functions: no Twisted, no I/O."""
