"""Search: an index over a trained run's video vectors (exact or approximate, FAISS), and queries against it."""
