"""The eval stage: rank a run's head (or zero-shot CLIP) on a cache split, raw or re-scored, into reports."""
