"""Ranking metrics, inference-time re-scoring (DSL, QB-Norm) and reports."""
