"""Refinement core: E-step as batched matrix products, M-step sums (no I/O, no dask)."""
