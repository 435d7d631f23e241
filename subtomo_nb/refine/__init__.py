"""Refinement core: E-step as batched matrix products, M-step sums, the pose driver (no dask; the
files a job reads are read by its ``from_options`` constructor)."""
