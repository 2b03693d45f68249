"""The checkpoint of an unfinished run: its statistics and its position, swapped in by rewriting one small JSON pointer.

Statistics go to a new file first, then `progress.json` names it, so a kill at any moment leaves a consistent
checkpoint; the previous statistics file is removed after the swap.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from ..artifacts import load_json, save_json
from ..decomposition.statistics import Statistics, load_statistics
from ..errors import AutoskillError
from .folder import CHECKPOINT_DIR, KEY_METADATA

PROGRESS_JSON = "progress.json"


class Checkpoint:
    """Statistics + position of one run (its key) in `folder/checkpoint/`: the position of every rank, for several."""

    def __init__(self, folder: Path, key: str):
        self.dir = Path(folder) / CHECKPOINT_DIR
        self.key = key

    def load(self) -> dict[str, Any] | None:
        """The saved position (None when there is no checkpoint); refuses another run's checkpoint."""
        path = self.dir / PROGRESS_JSON
        if not path.exists():
            return None
        progress = load_json(path)
        if not isinstance(progress, dict) or progress.get("key") != self.key:
            raise AutoskillError(f"{self.dir}: holds a checkpoint of a different run (other model, corpus or options); "
                                 "use another --out, pass --overwrite, or delete that folder")
        return progress

    def load_statistics(self, progress: dict[str, Any], device: torch.device) -> Statistics:
        return load_statistics(self.dir / progress["stats_file"], device=device)

    def save(self, stats: Statistics, progress: dict[str, Any]) -> None:
        name = f"stats-{progress['batches']:09d}.safetensors"
        stats.save(self.dir / name, metadata={KEY_METADATA: self.key})
        old = None
        if (self.dir / PROGRESS_JSON).exists():
            old = load_json(self.dir / PROGRESS_JSON).get("stats_file")
        save_json(self.dir / PROGRESS_JSON, {**progress, "key": self.key, "stats_file": name})
        if old and old != name:
            (self.dir / old).unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
