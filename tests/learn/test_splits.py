"""Subject-level, stratified splits and k-fold: no subject in two splits, ever."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sobre.errors import InputError
from sobre.learn import Cohort, check_disjoint, make_split
from sobre.learn._splits import SplitPlan


def subjects(n=120, seed=0, sites=("a", "b", "c"), p_pos=0.3):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"subject_id": [f"s{i:03d}" for i in range(n)],
                         "label": (rng.random(n) < p_pos).astype(int),
                         "site": [sites[i % len(sites)] for i in range(n)],
                         "age": rng.uniform(20, 80, n)})


def test_every_subject_in_exactly_one_split_and_proportions():
    s = subjects(200)
    plan = make_split(s, seed=1, test_fraction=0.2, val_fraction=0.25)
    train, val = plan.folds[0]
    assert len(plan.test) == 40 and len(val) == 40 and len(train) == 120
    assert sorted(plan.test + train + val) == sorted(s["subject_id"])
    check_disjoint(plan)
    t = plan.table()
    assert t["subject_id"].is_unique and set(t["split"]) == {"train", "validation", "test"}


def test_stratified_by_label_and_site():
    s = subjects(300, p_pos=0.2)
    plan = make_split(s, seed=2, test_fraction=0.2, val_fraction=0.2)
    lab = dict(zip(s["subject_id"], s["label"]))
    site = dict(zip(s["subject_id"], s["site"]))
    overall = s["label"].mean()
    for part in (plan.test, *plan.folds[0]):
        share = np.mean([lab[x] for x in part])
        assert abs(share - overall) <= 1.5 / len(part) + 0.01
        counts = pd.Series([site[x] for x in part]).value_counts()
        assert counts.max() - counts.min() <= 2
    # within the positive class too, sites are spread over the splits
    pos = s[s["label"] == 1]
    test_pos_sites = pd.Series([site[x] for x in plan.test if lab[x] == 1]).value_counts()
    assert len(test_pos_sites) == pos["site"].nunique()


def test_kfold_partitions_the_development_set_with_every_class_in_every_fold():
    s = subjects(90, p_pos=0.25)
    plan = make_split(s, seed=3, test_fraction=0.2, folds=5)
    vals = [set(v) for _, v in plan.folds]
    dev = set(plan.development)
    assert set().union(*vals) == dev and sum(len(v) for v in vals) == len(dev)
    lab = dict(zip(s["subject_id"], s["label"]))
    for train, val in plan.folds:
        assert set(train) == dev - set(val)
        assert {lab[x] for x in val} == {0, 1}
    assert max(len(v) for v in vals) - min(len(v) for v in vals) <= 1
    check_disjoint(plan)
    t = plan.table()
    assert (t.loc[t["split"] == "validation", "fold"] >= 0).all()


def test_test_set_depends_only_on_seed_fraction_and_strata():
    s = subjects(150)
    a = make_split(s, seed=7, test_fraction=0.2, val_fraction=0.2)
    b = make_split(s, seed=7, test_fraction=0.2, folds=5)
    c = make_split(s.sample(frac=1.0, random_state=1), seed=7, test_fraction=0.2, val_fraction=0.3)
    assert a.test == b.test
    assert a.sha256() == make_split(s, seed=7, test_fraction=0.2, val_fraction=0.2).sha256()  # deterministic
    assert a.test != make_split(s, seed=8, test_fraction=0.2).test
    assert len(c.test) == len(a.test)


def test_continuous_label_is_stratified_by_quantiles():
    s = subjects(200)
    s["label"] = s["age"]
    plan = make_split(s, seed=0, test_fraction=0.25, label_kind="regression")
    test_age = s.set_index("subject_id").loc[plan.test, "age"]
    assert abs(test_age.mean() - s["age"].mean()) < 3
    assert test_age.min() < 30 and test_age.max() > 70


def test_images_of_one_subject_never_straddle_splits():
    # 3 images for each of 30 subjects: the plan is per subject, rows follow their subject
    meta = [{"subject_id": f"s{i // 3:02d}", "site": "a", "label": (i // 3) % 2} for i in range(90)]
    c = Cohort.from_arrays(np.zeros((90, 4, 4, 4), np.float32), meta)
    subj = c.subjects(["label"])
    assert len(subj) == 30
    plan = make_split(subj, seed=0, test_fraction=0.2, val_fraction=0.25)
    rows = {name: set(c.rows_of(part)) for name, part in
            (("test", plan.test), ("train", plan.folds[0][0]), ("val", plan.folds[0][1]))}
    assert not (rows["test"] & rows["train"]) and not (rows["test"] & rows["val"]) and not (rows["train"] & rows["val"])
    assert sum(len(r) for r in rows.values()) == 90
    for name, r in rows.items():
        ids = c.table.loc[sorted(r), "subject_id"]
        assert all(ids.value_counts() == 3), name


def test_duplicate_subjects_are_refused():
    s = subjects(10)
    s.loc[3, "subject_id"] = "s000"
    with pytest.raises(InputError, match="appears twice"):
        make_split(s, seed=0)


def test_too_few_subjects_for_the_split():
    s = subjects(3, p_pos=0.0)
    s["label"] = [0, 1, 0]
    with pytest.raises(InputError, match=r"class '1' has 1 subject\(s\): too few") as e:
        make_split(s, seed=0, test_fraction=0.2)
    assert e.value.expected == "at least 3 subjects per class" and "1: 1" in e.value.found
    with pytest.raises(InputError, match="too few subjects for the requested split"):
        make_split(subjects(2).assign(label=0), seed=0, test_fraction=0.2, label_kind="regression")


def test_class_too_small_for_k_folds():
    s = subjects(40, p_pos=0.0)
    s.loc[:3, "label"] = 1  # 4 positives
    with pytest.raises(InputError, match="5-fold cross-validation") as e:
        make_split(s, seed=0, test_fraction=0.2, folds=5)
    assert "lower split.folds" in e.value.fix


def test_check_disjoint_detects_leakage():
    plan = SplitPlan(test=["a", "b"], folds=[(["c", "a"], ["d"])], seed=0)
    with pytest.raises(AssertionError, match="train and test"):
        check_disjoint(plan)


def test_fixed_test_set_from_a_column():
    s = subjects(50)
    mask = np.zeros(50, bool)
    mask[:10] = True
    plan = make_split(s, seed=0, test_mask=mask, val_fraction=0.2)
    assert plan.test == sorted(s["subject_id"][:10])
