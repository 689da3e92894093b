"""FER+ soft labels: the annotators' votes on FER2013's images as a 7-class target.

../shared/data/fer2013/ferplus_votes_train_val.npz holds, for the same rows as
fer2013_train_val.npz and in the same order, about ten votes per image over FER+'s ten
columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt,
unknown, NF (not a face).  The target of a row (``soft_targets``):

- the seven emotions' votes, moved to FER2013's class order, divided by their sum;
- contempt, unknown and not-a-face votes are dropped: contempt is no class of ours
  (FER2013 has none), and unknown and NF say nothing about which of ours it is;
- a row with no vote left (all NF: 160 rows; or only contempt / unknown) and the one
  row whose votes belong to another image (index 5274, see the data's README) keep
  FER2013's own label as a one-hot target;
- then mixed with FER2013's one-hot label: ``weight * votes + (1 - weight) * label``.
  FER2013's labels are what PublicTest measures, and where the crowd disagrees with
  them the mix keeps both.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from training.common import DEFAULT_DATA

DEFAULT_VOTES = DEFAULT_DATA.with_name("ferplus_votes_train_val.npz")
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                   "unknown", "NF")
# for each of our classes in FER2013's order (Angry, Disgust, Fear, Happy, Sad, Surprise,
# Neutral), its FER+ column
FER2013_FROM_FERPLUS = (4, 5, 6, 1, 3, 2, 0)
# rows of the original fer2013.csv whose FER+ votes describe another image
MISMATCHED_INDEX = (5274,)


def load_votes(path: Path, index: np.ndarray) -> np.ndarray:
    """The votes (N, 10) of the rows whose original csv row numbers are ``index`` (the
    data npz's ``index`` array, after any selection of rows)."""
    with np.load(path) as data:
        votes, vote_index = data["votes"], data["index"]
    position = {int(i): n for n, i in enumerate(vote_index)}
    missing = [int(i) for i in index if int(i) not in position]
    if missing:
        raise ValueError(f"{path} has no votes for {len(missing)} rows (first: {missing[0]})")
    return votes[[position[int(i)] for i in index]]


def soft_targets(votes: np.ndarray, labels: np.ndarray, index: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """(N, 7) float32 targets that sum to 1 (see the module's docstring)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], not {weight}")
    onehot = np.eye(7, dtype=np.float32)[labels]
    emotions = votes[:, FER2013_FROM_FERPLUS].astype(np.float32)
    total = emotions.sum(axis=1, keepdims=True)
    usable = (total[:, 0] > 0) & ~np.isin(index, MISMATCHED_INDEX)
    crowd = np.where(usable[:, None], emotions / np.maximum(total, 1), onehot)
    return (weight * crowd + (1 - weight) * onehot).astype(np.float32)


def majority_labels(votes: np.ndarray, index: np.ndarray) -> np.ndarray:
    """FER+'s majority label of each row in FER2013's class order, or -1 where there is
    none among our seven classes: the top column must have more votes than every other
    of the ten (so ties, and rows led by contempt, unknown or not-a-face, have none), and
    the mismatched row has none."""
    ranked = np.sort(votes, axis=1)
    top = votes.argmax(axis=1)
    clear = (ranked[:, -1] > ranked[:, -2]) & ~np.isin(index, MISMATCHED_INDEX)
    ours = np.full(10, -1)
    ours[list(FER2013_FROM_FERPLUS)] = np.arange(7)
    return np.where(clear, ours[top], -1)


def majority_accuracy(predicted: np.ndarray, majority: np.ndarray) -> dict:
    """Accuracy against FER+'s majority labels, on the rows that have one."""
    kept = majority >= 0
    return {"n": int(kept.sum()), "accuracy": round(float((predicted[kept] == majority[kept]).mean()), 4)}


def load_split_index(path: Path, usage: int) -> np.ndarray:
    """The original csv row numbers of one split of the data npz."""
    with np.load(path) as data:
        return data["index"][data["usage"] == usage]
