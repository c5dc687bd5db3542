"""Random-number state of one training worker, saved with each checkpoint.

A restarted worker group resumes from the newest checkpoint and computes the steps after it
again. Without the generators' state, those steps draw other LoRA-dropout masks than the run
that died did, so the recomputed losses (and weights) differ from the ones the dying attempt may
already have logged; with it, a resumed run continues exactly as the uninterrupted run would
(as HF Trainer's ``rng_state_{rank}.pth``).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state_file(root: Path, rank: int) -> Path:
    """Where rank ``rank`` keeps its generators' state in a checkpoint folder."""
    return root / f"rng_state_{rank}.pth"


def capture_rng_state() -> dict[str, Any]:
    """State of Python's, NumPy's, torch's CPU and (on a GPU worker) its device's generator."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        # The worker's own device draws its dropout masks (Ray Train sets it per local rank).
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_rng_state(root: Path, rank: int) -> Path:
    """Write this worker's generators' state into checkpoint folder ``root``."""
    path = rng_state_file(root, rank)
    torch.save(capture_rng_state(), path)
    return path


def restore_rng_state(root: Path, rank: int) -> bool:
    """Set this worker's generators from checkpoint folder ``root``; False when it holds none.

    A checkpoint from an older version, or one taken with fewer workers, has no state for this
    rank: the worker then keeps its seeded generators, and only the dropout masks differ.
    """
    path = rng_state_file(root, rank)
    if not path.is_file():
        return False
    # weights_only=False: Python's and NumPy's states are tuples holding arrays; the file is
    # one this run wrote into its own checkpoint.
    state = torch.load(path, weights_only=False)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    return True
