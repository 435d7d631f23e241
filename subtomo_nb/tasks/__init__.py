"""Jobs' numerical bodies on files: extract, reconstruct particle, re-centre, align symmetry on a
map or model.star, and the synthetic tutorial's pure pieces (no UI, no dask plumbing, no jobs)."""
