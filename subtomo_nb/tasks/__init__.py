"""Jobs' numerical bodies: extract, reconstruct particle, re-centre (no UI, no dask plumbing)."""
