"""What every stage shares: atomic file writes, loading files safely, I/O errors as one line, the device
and thread settings, and retrieval metrics (training's validation and evaluation both rank with them)."""

__version__ = "0.1.0"
