"""Corpus -> records -> texts -> tokenized examples -> length-bucketed batches, with the bad-example policy."""
