"""vtr: video-text retrieval with CAMoE and Dual Softmax Loss on frozen, cached CLIP features."""

from vtr.core import __version__

__all__ = ["__version__"]
