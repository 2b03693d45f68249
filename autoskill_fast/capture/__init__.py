"""Tokenized batches -> model forward with capture hooks -> pooled features: model loading, the feature layout, the
hooks, fingerprints, and pooled features in memory."""
