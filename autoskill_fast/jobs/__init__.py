"""The jobs over a run folder: profile (the Profiler's per-batch step, checkpoints, the fit), refit, merge, project."""
