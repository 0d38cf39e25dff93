"""Bounded fuzz targets (hypothesis): random and mutated input to every parser that faces a peer or a tenant.

Each target asserts that nothing escapes and that the state it feeds stays bounded; each file runs in
seconds, so the whole set stays within a minute or two of CI.
"""
