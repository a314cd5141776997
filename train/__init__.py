"""Alignment heads, contrastive losses and the fit loop over cached CLIP features."""
