"""vtr: video-text retrieval with CAMoE and Dual Softmax Loss on frozen, cached CLIP features."""

__version__ = "0.1.0"
