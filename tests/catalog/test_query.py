"""The cohort filter language: what it accepts, what it refuses (no code runs), and cohorts over a catalog."""

from __future__ import annotations

import pytest

from sobre.catalog import compile_filter
from sobre.errors import CatalogError, ExpressionError

FIELDS = ["modality", "age", "sex", "site", "diagnosis", "bmi", "score", "field_strength"]
RECS = [
    {"id": 1, "modality": "MR", "age": 25.0, "sex": "F", "site": "paris", "diagnosis": "healthy", "bmi": 22.0,
     "score": 3.0, "field_strength": 3.0},
    {"id": 2, "modality": "MR", "age": 39.9, "sex": "M", "site": "lyon", "diagnosis": "healthy", "bmi": None,
     "score": None, "field_strength": 1.5},
    {"id": 3, "modality": "MR", "age": 40.0, "sex": "F", "site": "paris", "diagnosis": "patient", "bmi": 31.0,
     "score": 7.0, "field_strength": 3.0},
    {"id": 4, "modality": "CT", "age": 30.0, "sex": None, "site": None, "diagnosis": "healthy", "bmi": 27.5,
     "score": 1.0, "field_strength": None},
    {"id": 5, "modality": "MR", "age": None, "sex": "O", "site": "nice", "diagnosis": None, "bmi": 19.0,
     "score": 2.0, "field_strength": 3.0},
]


def ids(expr: str) -> list[int]:
    pred = compile_filter(expr, FIELDS)
    return [r["id"] for r in RECS if pred(r)]


@pytest.mark.parametrize("expr, expected", [
    ('modality == "MR" and age >= 20 and age < 40 and diagnosis == "healthy"', [1, 2]),
    ("20 <= age < 40", [1, 2, 4]),  # chained comparison
    ("40 > age >= 30", [2, 4]),
    ('site in ["paris", "nice"]', [1, 3, 5]),
    ("site in ('paris',)", [1, 3]),  # tuple literal
    ('site not in ["paris"]', [2, 4, 5]),  # a missing value is "not in" every list
    ('not (sex == "F")', [2, 4, 5]),
    ('not sex == "F" and modality == "MR"', [2, 5]),
    ('sex == "F" or bmi > 30', [1, 3]),
    ("bmi == null", [2]),
    ("bmi != null and bmi < 20", [5]),
    ("site == None", [4]),
    ("age > -1", [1, 2, 3, 4]),
    ("score", [1, 3, 4, 5]),  # a bare field: present and truthy
    ("field_strength == 3", [1, 3, 5]),  # 3 == 3.0
    ("age > 30 or age < 30", [1, 2, 3]),  # null compares false both ways
    ('diagnosis > "a"', [1, 2, 3, 4]),  # strings order as strings
    ('age > "thirty"', []),  # text vs number: no match, no error
    ("modality == 'MR' and (age < 30 or age >= 40)", [1, 3]),
    ('site.startswith("pa")', [1, 3]),  # a missing value starts with nothing
    ('not site.endswith("on") and modality == "MR"', [1, 3, 5]),
    ('diagnosis.startswith("")', [1, 2, 3, 4]),
])
def test_accepted_expressions(expr, expected):
    assert ids(expr) == expected


def test_null_rules():
    """A missing value matches only == null (and != anything else)."""
    assert ids("age == null") == [5]
    assert ids("age != null") == [1, 2, 3, 4]
    assert ids("age < 100") == [1, 2, 3, 4]
    assert ids("not age < 100") == [5]
    assert ids('age != 25') == [2, 3, 4, 5]


@pytest.mark.parametrize("expr", [
    "__import__('os').system('touch /tmp/sobre-pwned')",
    "modality.lower() == 'mr'",
    "modality.__class__",
    "age.__class__.__bases__",
    "(lambda: 1)() == 1",
    "modality[0] == 'M'",
    "{'a': 1} == modality",
    "age + 1 > 2",
    "age * 2 > 2",
    "-age < 0",
    "[x for x in site]",
    "f'{modality}' == 'MR'",
    "(age := 3) > 1",
    "age if age else 1",
    "b'MR' == modality",
    "1j == age",
    "...",
    "42",
    "'MR'",
    "true",
    "print(1) or True",
    "exec('1')",
    "open('/etc/passwd')",
    "globals()",
    "age > 1 == len(site)",
    "site.startswith.__self__",
    "site.split('a') == 1",
    "site.startswith(site)",
    "site.startswith('a', 1)",
    "site.startswith(prefix='a')",
    "'paris'.startswith('p')",
])
def test_refused_constructs_raise_expression_error(expr, tmp_path):
    with pytest.raises(ExpressionError, match=r"not allowed|inside a list|takes one string"):
        compile_filter(expr, FIELDS)


def test_nothing_is_executed(tmp_path):
    marker = tmp_path / "pwned"
    for expr in (f"__import__('os').system('touch {marker}')", f"open('{marker}', 'w')",
                 f"modality == 'MR' or __import__('pathlib').Path('{marker}').touch()"):
        with pytest.raises(ExpressionError):
            compile_filter(expr, FIELDS)
    assert not marker.exists()


@pytest.mark.parametrize("expr, col", [
    ('"x" or 1; DROP TABLE series', 9),
    ('modality = "MR"', 10),
    ('modality == "MR" and', 21),  # the end
    ("age >= 20 and (age < 40", 15),
    ('modality == "MR', 13),
])
def test_syntax_errors_give_the_position(expr, col):
    with pytest.raises(ExpressionError, match=rf"syntax error in filter expression at column {col}\b") as err:
        compile_filter(expr, FIELDS)
    lines = str(err.value).splitlines()
    assert lines[1].strip() == expr.strip()  # the expression ...
    assert lines[2].index("^") - lines[1].index(expr.strip()[0]) == col - 1  # ... and a caret under the column


def test_sql_injection_in_a_string_is_just_a_string():
    """Quotes are Python literals, never spliced into SQL: this is one odd string value."""
    assert ids("site == \"x' OR 1=1; DROP TABLE series; --\"") == []


def test_unknown_field_lists_the_known_ones():
    with pytest.raises(ExpressionError, match=r"unknown field 'agee'. Did you mean age\?.*expected one of: age, bmi, "
                                              r"diagnosis, field_strength, modality, score, sex, site"):
        compile_filter("agee > 3", FIELDS)
    with pytest.raises(ExpressionError, match=r"unknown field 'hospital'.*expected one of: "):
        compile_filter('modality == "MR" and hospital == "x"', FIELDS)


def test_in_needs_a_literal_list():
    with pytest.raises(ExpressionError, match=r"'in' needs a list of values on its right.*found \"MR\""):
        compile_filter('modality in "MR"', FIELDS)
    with pytest.raises(ExpressionError, match=r"'in' needs a list.*found site"):
        compile_filter("modality in site", FIELDS)
    with pytest.raises(ExpressionError, match=r"'paris' inside a list is neither a string nor a number.*"
                                              r"put text in double quotes"):
        compile_filter("site in [paris]", FIELDS)


def test_degenerate_inputs():
    with pytest.raises(ExpressionError, match=r"empty filter expression"):
        compile_filter("   ", FIELDS)
    with pytest.raises(ExpressionError, match=r"nested too deeply"):
        compile_filter("not " * 5000 + "age > 1", FIELDS)
    with pytest.raises(ExpressionError, match=r"syntax error|cannot be parsed"):
        compile_filter("age > 1\x00", FIELDS)
    with pytest.raises(ExpressionError, match=r"syntax error.*too many nested parentheses"):
        compile_filter("(" * 300 + "age" + ")" * 300 + " > 1", FIELDS)
    long_and = " and ".join(["age > 1"] * 2000)  # long but flat: fine
    assert ids(long_and) == [1, 2, 3, 4]


# --------------------------------------------------------------------------- over a catalog
def test_workspace_query_and_cohorts(ingested, dump):
    q = ingested.query('modality == "MR" and age >= 20 and age < 40 and diagnosis == "healthy"')
    assert [r["subject_id"] for r in q] == ["S01"]
    q = ingested.query('diagnosis in ["patient"] and score > 9')
    assert sorted(r["subject_id"] for r in q) == ["S02", "S05"]
    assert ingested.query('site == null')[0]["subject_id"] == "S05"
    assert len(ingested.query(None)) == 5

    c = ingested.cohort_create("young-mr", 'modality == "MR" and 20 <= age < 40')
    assert (c["name"], c["n_series"], c["n_subjects"], c["versions"]) == ("young-mr", 3, 3, [])
    assert sorted(m["subject_id"] for m in c["members"]) == ["S01", "S02", "S05"]
    assert [x["name"] for x in ingested.cohorts()] == ["young-mr"]

    before = dump(ingested)
    with pytest.raises(CatalogError, match=r"cohort 'young-mr' exists.*pass --replace"):
        ingested.cohort_create("young-mr", "age > 1")
    with pytest.raises(ExpressionError, match=r"unknown field 'weight_kg'"):
        ingested.cohort_create("other", "weight_kg > 3")
    with pytest.raises(CatalogError, match=r"invalid cohort name"):
        ingested.cohort_create("../escape", "age > 1")
    with pytest.raises(CatalogError, match=r"invalid cohort name"):
        ingested.cohort_create("..", "age > 1")
    with pytest.raises(CatalogError, match=r"invalid cohort name"):
        ingested.cohort_create("x" * 101, "age > 1")
    assert dump(ingested) == before  # refused: nothing written

    c = ingested.cohort_create("young-mr", 'modality == "CT"', replace=True)
    assert c["n_series"] == 1 and c["where"] == 'modality == "CT"'
    with pytest.raises(CatalogError, match=r"no cohort 'nope' \(expected one of: young-mr\)"):
        ingested.cohort("nope")
