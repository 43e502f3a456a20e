"""Readers: a finished store's arrays, memory-mapped from disk or held in RAM."""
