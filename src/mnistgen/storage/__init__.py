"""Run directories and checkpoint files: what a run leaves on disk, below training, evaluation and figures."""
