"""What we prune and how we measure it: models (names -> model, tokenizer), data (disjoint
calibration / evaluation windows), arch (where layers, heads and projections live in each
family), metrics (perplexity, counts, sizes, FLOPs), timing (the interleaved timer) and
provenance (where a stored measurement came from).
"""
