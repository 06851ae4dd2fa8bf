"""Model cards: every section, "not stated" where nothing says, ranges equal to the catalog's, escaped renderings."""

from __future__ import annotations

import csv
import json

from sobre.models import CARD_SECTIONS, CROSSWALK, FRAMEWORKS, NOT_STATED, render_html, render_markdown

from .conftest import SCRIPT


def test_card_has_every_section_and_says_not_stated(package):
    card = package.card
    assert card == json.loads((package.path / "card" / "card.json").read_text())
    s = card["sections"]
    assert list(s) == [k for k, _ in CARD_SECTIONS]
    assert len(CARD_SECTIONS) == 13
    assert s["intended_use"]["purpose"] == f"triage of {SCRIPT}"
    for key in ("users", "setting", "population", "contraindications", "out_of_scope"):
        assert s["intended_use"][key] == NOT_STATED
    assert s["model_details"]["developers"] == "tests"
    assert s["model_details"]["contact"] == NOT_STATED and s["model_details"]["license"] == NOT_STATED
    assert s["training_data"]["labelling_process"] == NOT_STATED
    assert s["human_oversight"]["stated"] == NOT_STATED
    assert s["outputs"]["codes"] == {c: NOT_STATED for c in s["outputs"]["classes_in_score_order"]}
    assert s["runtime"]["measured_at_registration"] == NOT_STATED  # registered with measure=False
    assert s["model_details"]["model_sha256"] == package.model_sha256


def test_card_reports_the_validation_report(site, package):
    _, run = site
    rep = json.loads((run.path / "report" / "report.json").read_text())
    q = package.card["sections"]["quantitative_analyses"]
    assert set(q["metrics"]) == set(rep["metrics"])
    for k, v in rep["metrics"].items():
        assert (q["metrics"][k]["value"], q["metrics"][k]["ci_low"], q["metrics"][k]["ci_high"]) == \
            (v["value"], v["ci_low"], v["ci_high"])
    assert set(q["subgroups"]) == set(rep["subgroups"])
    m = package.card["sections"]["metrics"]
    assert m["decision_threshold"]["threshold"] == rep["details"]["threshold"]
    assert m["operating_point"]["threshold"] == rep["triage"]["threshold"]
    caveats = package.card["sections"]["caveats_and_recommendations"]
    assert all(f"report: {x}" in caveats for x in rep["limits"])
    assert any("small training set" in c for c in caveats)


def _expected_ranges(ws, run):
    """Straight from the catalog: records of the subjects the run trained on (train + validation splits)."""
    with open(run.path / "split.csv", newline="") as fh:
        dev = {r["subject_id"] for r in csv.DictReader(fh) if r["split"] in ("train", "validation")}
    recs = [r for r in ws.records() if r["subject_id"] in dev]
    ages = [r["age"] for r in recs]
    sexes: dict = {}
    sites: dict = {}
    for r in recs:
        sexes[r["sex"]] = sexes.get(r["sex"], 0) + 1
        sites[r["site"]] = sites.get(r["site"], 0) + 1
    return recs, ages, sexes, sites


def test_training_ranges_equal_the_catalogs(site, package):
    ws, run = site
    recs, ages, sexes, sites = _expected_ranges(ws, run)
    s = package.card["sections"]
    pop = s["training_data"]["population"]
    assert pop["n_subjects"] == len(recs) == pop["n_series"]
    assert (pop["ages_years"]["min"], pop["ages_years"]["max"]) == (min(ages), max(ages))
    assert pop["sexes"]["counts"] == dict(sorted(sexes.items())) and pop["sites"]["counts"] == dict(sorted(sites.items()))
    acq = s["inputs"]["ranges_seen_in_training"]
    spacing = [r["spacing"] for r in recs]
    assert acq["voxel_size_mm"]["min"] == [min(x[i] for x in spacing) for i in range(3)]
    assert acq["voxel_size_mm"]["max"] == [max(x[i] for x in spacing) for i in range(3)]
    assert acq["modalities"]["counts"] == {"MR": len(recs)}
    # what the catalog does not hold is said, never guessed
    assert acq["manufacturers"] == {"counts": {}, "missing": len(recs)}
    assert acq["field_strength_t"]["min"] is None and acq["field_strength_t"]["missing"] == len(recs)
    assert acq["slice_thickness_mm"].startswith(NOT_STATED)
    assert any("manufacturer not recorded" in c for c in s["caveats_and_recommendations"])
    assert s["training_data"]["simulated"] == "no simulated image"
    assert s["training_data"]["labels"] == {"control": sum(r["diagnosis"] == "control" for r in recs),
                                            SCRIPT: sum(r["diagnosis"] == SCRIPT for r in recs)}


def test_renderings_escape_a_label_named_script(package):
    html = (package.path / "card" / "card.html").read_text()
    md = (package.path / "card" / "card.md").read_text()
    assert SCRIPT in json.dumps(package.card)
    for text in (html, md):
        assert "<script" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    card = json.loads(json.dumps(package.card))
    card["sections"]["intended_use"]["users"] = "<img src=x onerror=alert(1)> | pipes"
    card["sections"]["model_details"]["name"] = "</title><script>x</script>"
    out = render_html(card)
    assert "<img" not in out and "<script" not in out and "&lt;img src=x onerror=alert(1)&gt;" in out
    assert "\\| pipes" in render_markdown(card) and "<img" not in render_markdown(card)


def test_crosswalk_maps_every_framework_to_card_sections(package):
    keys = {k for k, _ in CARD_SECTIONS}
    assert {r["framework"] for r in CROSSWALK} == set(FRAMEWORKS)
    for r in CROSSWALK:
        assert set(r["sections"]) <= keys, r
        assert r["citation"] in ("checked", "from memory", "topic only")
        assert r["item"] or r["citation"] == "topic only"  # no number is given that was not at least recalled
    covered = {s for r in CROSSWALK for s in r["sections"]}
    assert covered == keys  # every section answers something
    html = (package.path / "card" / "card.html").read_text()
    assert "13(3)(b)(i)" in html and "TRIPOD+AI" in html and "CLAIM 2024" in html and "FDA 2025 draft" in html
