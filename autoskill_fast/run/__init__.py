"""The run folder: its files, the versioned run.json, checkpoints, features and scores on disk, and reading a run back."""
