"""Subject-level splits: a held-out test set, then train/validation or k folds, stratified.

Every image of a subject goes to the same split: splits are made on a table with one row per
subject, never on images. Stratification is *systematic*: subjects are ordered by the
stratification keys (e.g. label class, then site; a continuous label in quantile bins), randomly
within each stratum, and dealt out in that order so that every split receives its proportional
share (±1) of every class and, within classes, of every site — also when strata are tiny, where
per-stratum rounding would leave a class out of a split.

The test set is drawn first, from all subjects, and depends only on the seed, the test fraction
(or the test column) and the stratification: changing ``folds`` or ``val_fraction`` never moves a
subject in or out of the test set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sobre.errors import InputError

__all__ = ["SplitPlan", "make_split", "stratification_keys", "check_disjoint", "deal", "holdout"]

SPLITS = ("train", "validation", "test")


@dataclass
class SplitPlan:
    """Which subject goes where.

    Attributes
    ----------
    test : list of str
        Held-out test subjects (never shown to training code).
    folds : list of (train, validation) pairs of subject lists
        One pair without cross-validation, ``k`` pairs with ``k``-fold cross-validation
        (the validation sets then partition the development set).
    """

    test: list[str]
    folds: list[tuple[list[str], list[str]]]
    seed: int
    details: dict = field(default_factory=dict)

    @property
    def development(self) -> list[str]:
        train, val = self.folds[0]
        return sorted(set(train) | set(val))

    def table(self) -> pd.DataFrame:
        """One row per subject: ``subject_id``, ``split`` (train/validation/test) and ``fold``.

        With k folds, ``split`` is ``validation`` for every development subject (each is validated
        once, in fold ``fold``) and ``test`` for the held-out ones.
        """
        rows = [{"subject_id": s, "split": "test", "fold": -1} for s in self.test]
        if len(self.folds) == 1:
            train, val = self.folds[0]
            rows += [{"subject_id": s, "split": "train", "fold": 0} for s in train]
            rows += [{"subject_id": s, "split": "validation", "fold": 0} for s in val]
        else:
            for i, (_, val) in enumerate(self.folds):
                rows += [{"subject_id": s, "split": "validation", "fold": i} for s in val]
        return pd.DataFrame(rows).sort_values("subject_id", kind="stable").reset_index(drop=True)

    def sha256(self) -> str:
        t = self.table()
        text = "\n".join(f"{r.subject_id},{r.split},{r.fold}" for r in t.itertuples())
        return hashlib.sha256(text.encode()).hexdigest()

    def summary(self) -> dict:
        out = {"n_test": len(self.test), "n_folds": len(self.folds), "seed": self.seed, "sha256": self.sha256()}
        if len(self.folds) == 1:
            out["n_train"], out["n_validation"] = len(self.folds[0][0]), len(self.folds[0][1])
        else:
            out["n_development"] = len(self.development)
        out.update(self.details)
        return out


def check_disjoint(plan: SplitPlan) -> None:
    """Raise if a subject appears in two splits (the leakage every split must exclude)."""
    test = set(plan.test)
    for i, (train, val) in enumerate(plan.folds):
        for a, b, name in ((train, val, "train and validation"), (train, test, "train and test"),
                           (val, test, "validation and test")):
            both = set(a) & set(b)
            if both:
                raise AssertionError(f"fold {i}: subject(s) {sorted(both)[:3]} in both {name}")
    if len(plan.folds) > 1:
        seen: set = set()
        for _, val in plan.folds:
            if seen & set(val):
                raise AssertionError("a subject is validated in two folds")
            seen |= set(val)


def stratification_keys(subjects: pd.DataFrame, stratify: list[str], *, label_kind: str,
                        n_bins: int = 5) -> pd.DataFrame:
    """Sortable stratification keys per subject, major key first.

    ``"label"`` stands for the task's label column (``subjects["label"]``); a continuous label is
    cut into ``n_bins`` quantile bins. Missing values form their own stratum.
    """
    keys = pd.DataFrame(index=subjects.index)
    for i, col in enumerate(stratify):
        if col not in subjects.columns:
            raise InputError(f"stratification column '{col}' is not in the subject table",
                             expected="one of: " + ", ".join(map(str, subjects.columns)), found=col,
                             fix="set split.stratify to existing metadata columns, or [] for none")
        v = subjects[col]
        if col == "label" and label_kind == "regression" or (
                col != "label" and pd.api.types.is_float_dtype(v) and v.nunique() > 10):
            ranks = v.rank(method="first")
            bins = np.floor((ranks - 1) / max(len(v), 1) * n_bins)
            keys[f"k{i}"] = bins.fillna(-1).astype(int).astype(str).str.zfill(3)
        else:
            keys[f"k{i}"] = v.astype(str).fillna("<missing>")
    return keys


def _order(keys: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Positions sorted by stratum keys, random within a stratum."""
    tie = rng.permutation(len(keys))
    cols = [keys[c].to_numpy() for c in reversed(keys.columns)]
    return np.lexsort([tie, *cols]) if cols else tie


def holdout(keys: pd.DataFrame, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the held-out share, dealt systematically along the stratified order."""
    n = len(keys)
    order = _order(keys, rng)
    offset = rng.random()
    pos = np.arange(n)
    pick = np.floor((pos + 1) * fraction + offset) > np.floor(pos * fraction + offset)
    mask = np.zeros(n, bool)
    mask[order[pick]] = True
    return mask


def deal(keys: pd.DataFrame, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index (0..k-1) per position, dealt round-robin along the stratified order."""
    order = _order(keys, rng)
    folds = np.empty(len(keys), int)
    folds[order] = (np.arange(len(keys)) + int(rng.integers(k))) % k
    return folds


def make_split(subjects: pd.DataFrame, *, seed: int, test_fraction: float = 0.2, val_fraction: float = 0.2,
               folds: int = 1, stratify: list[str] = ("label", "site"), label_kind: str = "binary",
               test_mask: np.ndarray | None = None, config_path=None) -> SplitPlan:
    """Split subjects into test, then train/validation (or k folds).

    Parameters
    ----------
    subjects : DataFrame
        One row per subject with ``subject_id``, ``label`` (absent for label-free tasks) and the
        stratification columns.
    seed : int
    test_fraction, val_fraction : float
    folds : int
        1 for one train/validation split, k > 1 for k-fold cross-validation of the development set.
    stratify : list of str
    label_kind : str
        Task kind; classification checks that every class can reach every split.
    test_mask : array of bool, optional
        Fixes the test set (e.g. from a metadata column) instead of ``test_fraction``.

    Raises
    ------
    InputError
        Duplicate subjects, too few subjects for the requested split, a class too small to be
        present in every split or fold.
    """
    subjects = subjects.reset_index(drop=True)
    ids = subjects["subject_id"].astype(str)
    if ids.duplicated().any():
        raise InputError(f"subject '{ids[ids.duplicated()].iloc[0]}' appears twice in the subject table",
                         fix="aggregate images per subject before splitting")
    n = len(subjects)
    classification = label_kind in ("binary", "multiclass")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5B1]))
    stratify = list(stratify)
    if "label" in stratify and "label" not in subjects.columns:
        stratify.remove("label")
    if classification and "label" in subjects.columns:
        counts = subjects["label"].astype(str).value_counts()
        need = (1 if (test_mask is None and test_fraction > 0) else 0) + max(folds, 2)
        small = counts[counts < need].sort_values(kind="stable")
        if len(small):
            cls, cnt = small.index[0], int(small.iloc[0])
            where = f"{folds}-fold cross-validation" if folds > 1 else "a train/validation split"
            raise InputError(
                f"class '{cls}' has {cnt} subject(s): too few for a held-out test set and {where}",
                path=config_path, expected=f"at least {need} subjects per class",
                found=", ".join(f"{c}: {v}" for c, v in counts.items()),
                fix="add subjects of that class, lower split.folds, or set split.test_fraction = 0 "
                    "with a test_column")
    min_dev = max(2, folds)
    keys = stratification_keys(subjects, stratify, label_kind=label_kind)
    if test_mask is not None:
        test = np.asarray(test_mask, bool)
    elif test_fraction > 0:
        test = holdout(keys, test_fraction, rng)
    else:
        test = np.zeros(n, bool)
    dev_idx = np.flatnonzero(~test)
    if len(dev_idx) < min_dev or (test_fraction > 0 and test_mask is None and not test.any()):
        raise InputError(f"too few subjects for the requested split: {n} subject(s)", path=config_path,
                         expected=f"at least one test subject and {min_dev} development subjects "
                                  f"(test_fraction={test_fraction}, folds={folds})",
                         found=f"{int(test.sum())} test and {len(dev_idx)} development subjects",
                         fix="add subjects, or lower split.test_fraction / split.folds")
    dev_keys = keys.iloc[dev_idx].reset_index(drop=True)
    dev_ids = ids.iloc[dev_idx].tolist()
    plan_folds: list[tuple[list[str], list[str]]] = []
    if folds == 1:
        val = holdout(dev_keys, val_fraction, rng)
        if not val.any() or val.all():
            raise InputError("too few development subjects for a validation split", path=config_path,
                             expected=f"val_fraction={val_fraction} of {len(dev_ids)} subjects to give at least "
                                      "one validation and one training subject",
                             found=f"{int(val.sum())} validation subject(s)",
                             fix="add subjects or raise split.val_fraction")
        plan_folds.append(([s for s, v in zip(dev_ids, val) if not v], [s for s, v in zip(dev_ids, val) if v]))
    else:
        f = deal(dev_keys, folds, rng)
        for i in range(folds):
            plan_folds.append(([s for s, fi in zip(dev_ids, f) if fi != i], [s for s, fi in zip(dev_ids, f) if fi == i]))
    if classification and "label" in subjects.columns:
        lab = dict(zip(ids, subjects["label"].astype(str)))
        classes = sorted(set(lab.values()))
        for i, (train, val) in enumerate(plan_folds):
            for name, members in (("training", train), ("validation", val)):
                present = {lab[s] for s in members}
                missing = [c for c in classes if c not in present]
                if missing:
                    raise InputError(f"class '{missing[0]}' has no subject in the {name} set of fold {i}",
                                     path=config_path, expected="every class in every split",
                                     found=f"{len(members)} {name} subjects, classes {sorted(present)}",
                                     fix="add subjects of that class or lower split.folds")
    plan = SplitPlan(test=sorted(ids[test].tolist()), folds=[(sorted(a), sorted(b)) for a, b in plan_folds],
                     seed=int(seed), details={"stratify": stratify})
    check_disjoint(plan)
    return plan
