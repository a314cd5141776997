"""Datasets, ffmpeg decoding and frame sampling, CLIP encoding: everything that writes the cache."""
