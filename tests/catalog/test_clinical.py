"""Clinical tables: typed variables joined by subject id, all rows or none, errors naming line and column."""

from __future__ import annotations

import pytest

from sobre.catalog._clinical import read_clinical
from sobre.errors import InputError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_types_units_and_missing_values(tmp_path):
    p = write(tmp_path, "t.csv",
              "subject_id,weight [kg],grade,onset,note,empty [mm]\n"
              "A,70.5,1,2020-01-02,ok,\n"
              "B,NA,2,n/a,,NA\n"
              "C,  81 ,3,2021-12-31,n/a,\n")
    t = read_clinical(p)
    cols = {c.name: c for c in t.columns}
    assert t.id_column == "subject_id" and t.subject_lines == {"A": 2, "B": 3, "C": 4}
    assert (cols["weight"].kind, cols["weight"].unit, cols["weight"].values) == \
        ("numeric", "kg", {"A": 70.5, "B": None, "C": 81.0})
    assert cols["grade"].kind == "numeric" and cols["grade"].values["B"] == 2.0
    assert (cols["onset"].kind, cols["onset"].values) == ("date", {"A": "2020-01-02", "B": None, "C": "2021-12-31"})
    assert (cols["note"].kind, cols["note"].values) == ("categorical", {"A": "ok", "B": None, "C": None})
    # a unit makes a column numeric even before it holds any value
    assert (cols["empty"].kind, cols["empty"].unit, cols["empty"].values) == ("numeric", "mm", dict.fromkeys("ABC"))


def test_tsv_and_participant_id(tmp_path):
    t = read_clinical(write(tmp_path, "participants.tsv", "participant_id\tage\tsex\nsub-01\t30\tF\n"))
    assert t.id_column == "participant_id" and [c.name for c in t.columns] == ["age", "sex"]


def test_xlsx(tmp_path):
    import pandas as pd

    p = tmp_path / "t.xlsx"
    pd.DataFrame({"PatientID": ["A", "B"], "Score [points]": ["1.5", "x"], "Group": ["g1", "g2"]}) \
        .to_excel(p, index=False)
    with pytest.raises(InputError, match=r"t.xlsx: unparseable value in numeric column 'Score \[points\]'.*"
                                         r"found 'x' on line 3"):
        read_clinical(p)
    pd.DataFrame({"PatientID": ["A", "B"], "Score [points]": ["1.5", "2"]}).to_excel(p, index=False)
    assert read_clinical(p).columns[0].values == {"A": 1.5, "B": 2.0}


@pytest.mark.parametrize("text, pattern", [
    ("subject_id,age\nA,31\nB,4O\nC,50\nD,61\nE,70\n",
     r"bad.csv: unparseable value in numeric column 'age' \(expected a number.*found '4O' on line 3\)"),
    ("subject_id,weight [kg]\nA,70\nB,heavy\nC,seventy\n",
     r"unparseable value in numeric column 'weight \[kg\]'.*found 'heavy' on line 3 and 1 more"),
    ("subject_id,age\n\nA,31\n\nB,x31\nC,33\nD,34\nE,35\n",  # blank lines still count as lines
     r"found 'x31' on line 5"),
    ("subject_id,age [y]\nA,inf\n", r"found 'inf' on line 2"),
    ("id,age\nA,3\n", r"no subject identifier column \(expected one of subject_id, participant_id, PatientID, "
                      r"patient_id, subject; found id, age\)"),
    ("subject_id,age\nA,3\nA,4\n", r"subject 'A' appears twice \(found lines 2 and 3\)"),
    ("subject_id,age\nA,3\n,4\n", r"empty subject identifier \(found line 3, column subject_id\)"),
    ("subject_id,Age,age\nA,3,3\n", r"columns 'Age' and 'age' both give the variable 'age'"),
    ("subject_id,1st\nA,3\n", r"column name '1st' cannot be used as a variable"),
    ("subject_id,a\nA,1\nB,1,2,3\n", r"table cannot be parsed \(ParserError: .*line 3"),
    ("", r"table cannot be parsed \(EmptyDataError"),
])
def test_bad_tables_name_file_line_and_column(tmp_path, text, pattern):
    with pytest.raises(InputError, match=pattern):
        read_clinical(write(tmp_path, "bad.csv", text))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope.csv: no such file"):
        read_clinical(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- joined to a catalog
def test_unknown_subjects_leave_the_catalog_unchanged(ingested, tmp_path, dump):
    before = dump(ingested)
    p = write(tmp_path, "c.csv", "subject_id,smoker\nS01,yes\nS99,no\nS02,no\nX7,yes\n")
    with pytest.raises(InputError, match=r"c.csv: 2 subject id\(s\) in column 'subject_id' are not in the catalog: "
                                         r"'S99' \(line 3\), 'X7' \(line 5\).*nothing from this table was stored"):
        ingested.add_clinical(p)
    assert dump(ingested) == before


def test_column_shadowing_a_builtin_field_is_refused(ingested, tmp_path, dump):
    before = dump(ingested)
    p = write(tmp_path, "c.csv", "subject_id,smoker,modality\nS01,yes,MR\n")
    with pytest.raises(InputError, match=r"column 'modality' would shadow a built-in field"):
        ingested.add_clinical(p)
    assert dump(ingested) == before  # 'smoker', read before 'modality', is not stored either


def test_type_change_is_refused(ingested, tmp_path, dump):
    before = dump(ingested)
    p = write(tmp_path, "c.csv", "subject_id,score\nS01,high\n")  # score was numeric
    with pytest.raises(InputError, match=r"column 'score' changes type \(expected numeric .*; found categorical\)"):
        ingested.add_clinical(p)
    assert dump(ingested) == before


def test_adding_again_is_idempotent_and_updates_values(ingested, clinical_csv, tmp_path, dump):
    before = dump(ingested)
    ingested.add_clinical(clinical_csv)
    assert dump(ingested) == before
    p = write(tmp_path, "update.csv", "subject_id,score [points],smoker\nS01,13,yes\nS03,4,no\n")
    info = ingested.add_clinical(p)
    assert info["subjects"] == 2
    recs = {r["subject_id"]: r for r in ingested.records()}
    assert (recs["S01"]["score"], recs["S03"]["score"], recs["S02"]["score"]) == (13.0, 4.0, 20.0)
    assert (recs["S01"]["smoker"], recs["S02"]["smoker"]) == ("yes", None)
    assert ingested.variables()["smoker"] == {"kind": "categorical", "unit": None}
    assert ingested.variables()["score"] == {"kind": "numeric", "unit": "points"}


def test_clinical_age_and_sex_fill_gaps_only(workspace, tmp_path):
    """Clinical age/sex complete what the images lack; they never override the header."""
    import sobre

    from .conftest import make_image, write_series

    write_series(tmp_path / "d" / "a", {"patient_id": "A", "patient_age": "040Y", "patient_sex": "M"})
    sobre.save(make_image(), tmp_path / "d" / "B.nii.gz")  # NIfTI: no age, no sex
    p = write(tmp_path, "c.csv", "subject_id,age,sex\nA,99,F\nB,33,F\n")
    report = workspace.ingest([tmp_path / "d"], clinical=p)
    assert report.clinical_error is None
    recs = {r["subject_id"]: r for r in workspace.records()}
    assert (recs["A"]["age"], recs["A"]["sex"]) == (40.0, "M")
    assert (recs["B"]["age"], recs["B"]["sex"]) == (33.0, "F")


def test_ingest_with_unparseable_table_ingests_nothing(workspace, cohort_dir, tmp_path, dump):
    before = dump(workspace)
    p = write(tmp_path, "c.csv", "subject_id,age\nS01,3\nS02,x\nS03,4\nS04,5\nS05,6\n")
    with pytest.raises(InputError, match=r"c.csv: unparseable value in numeric column 'age'.*line 3"):
        workspace.ingest([cohort_dir], clinical=p)
    assert dump(workspace) == before


def test_ingest_with_unknown_subjects_keeps_images_reports_table(workspace, cohort_dir, tmp_path):
    p = write(tmp_path, "c.csv", "subject_id,smoker\nS01,yes\nNOBODY,no\n")
    report = workspace.ingest([cohort_dir], clinical=p)
    assert report.new == 30 and report.clinical is None
    assert "'NOBODY' (line 3)" in report.clinical_error
    assert "smoker" not in workspace.variables()
