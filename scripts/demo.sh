#!/usr/bin/env bash
# The main job on the embedded default (local folder + SQLite), on real sample data:
# create a workspace, ingest real DICOM and NIfTI files, query, freeze a dataset version,
# verify it, and export a series to NIfTI. Run by `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
SOBRE=".venv/bin/sobre"
PY=".venv/bin/python"
WS="demo-workspace"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

PYDICOM_DATA="$($PY -c 'from sobre import samples; print(samples.path("pydicom-data"))')/data_store/data"
TEMPLATES="$($PY -c 'from sobre import samples; print(samples.path("mricron-data"))')/usr/share/mricron/templates"
ITK="$($PY -c 'from sobre import samples; print(samples.path("itk-examples"))')/usr/share/doc/insighttoolkit5-examples/examples/Data"

step "1. create a workspace ($WS: a folder + SQLite catalog)"
rm -rf "$WS"
$SOBRE init "$WS"

step "2. ingest real data: NEMA/pydicom DICOM samples, the Colin27 brain, the AAL atlas, an ITK T1 head"
$SOBRE ingest -w "$WS" "$PYDICOM_DATA" "$TEMPLATES/ch2.nii.gz" "$TEMPLATES/aal.nii.gz" \
  "$ITK/KmeansTest_T1UCharRaw.nii.gz" --site demo-site

step "3. ingest again: nothing changes (idempotent)"
$SOBRE ingest -w "$WS" "$PYDICOM_DATA" --site demo-site | head -2

step "4. geometry of one file (LPS affine, orientation, spacing)"
$SOBRE info "$TEMPLATES/ch2.nii.gz"

step "5. a cohort by filter, then frozen into an immutable, hashed dataset version"
$SOBRE cohort create -w "$WS" ct-cohort --where 'modality == "CT" and format == "dicom"'
$SOBRE cohort show -w "$WS" ct-cohort
$SOBRE cohort freeze -w "$WS" ct-cohort
$SOBRE dataset verify -w "$WS" ct-cohort@v1

step "6. export a catalogued series to NIfTI"
UID_LABEL="$($SOBRE cohort show -w "$WS" ct-cohort --json | $PY -c '
import json, sys
m = max(json.load(sys.stdin)["members"], key=lambda r: (len(r["shape"] or []), r["n_files"]))
print(m["series_uid"] + "#" + m["label"])')"
$SOBRE export -w "$WS" "$UID_LABEL" --to "$WS/exports/ct.nii.gz"

step "summary"
$PY - <<PYEOF
import json
from sobre.catalog import Workspace
with Workspace.open("$WS") as ws:
    print(json.dumps(ws.summary(), indent=2))
PYEOF
