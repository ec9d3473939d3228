"""The shared benchmark data sets (BANKING77, CLINC150, GoEmotions) as read by the benchmark scripts
(development only: not part of the installed package).

They are not shipped: a checkout reads them from ``../shared/data`` (or ``HF_INCR_DATA_DIR``); a user gets the same
sets from the Hub (``banking77``, ``clinc_oos``, ``go_emotions``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from datasets import Dataset, load_dataset

from hf_incr import DataError

DATA_DIR_ENV = "HF_INCR_DATA_DIR"


def shared_data_dir(default: str | os.PathLike | None = None) -> Path | None:
    """``$HF_INCR_DATA_DIR``, else ``default``, else ``../shared/data`` next to the checkout; None if absent."""
    candidates = [os.environ.get(DATA_DIR_ENV), default, Path(__file__).resolve().parents[3] / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "banking77").is_dir():
            return Path(candidate)
    return None


def load_shared_split(data_dir: str | os.PathLike | None, name: str, split: str) -> Dataset:
    """One split of a shared data set; CLINC150 without ``oos``. Label column: ``label`` (or ``labels``)."""
    root = shared_data_dir(data_dir)
    if root is None:
        raise DataError(
            f"The shared data sets were not found (looked at {data_dir!r}, ${DATA_DIR_ENV} and ../shared/data). "
            f"Set {DATA_DIR_ENV} to the folder holding banking77/, clinc150/ and goemotions/."
        )
    path = root / name / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; {name} has the splits {sorted(p.stem for p in (root / name).glob('*.jsonl'))}."
        )
    dataset = load_dataset("json", data_files=str(path), split="train")
    if name == "clinc150":
        dataset = dataset.filter(lambda row: row["label"] != "oos")
    keep = [c for c in ("text", "label", "labels") if c in dataset.column_names]
    return dataset.select_columns(keep)


def label_order(labels: list[str], seed: int = 0) -> list[str]:
    """The anchors' label order: sort the names, then ``random.Random(seed).shuffle``."""
    order = sorted(labels)
    random.Random(seed).shuffle(order)
    return order
