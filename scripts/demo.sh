#!/usr/bin/env bash
# The main job on the embedded default (local folder + SQLite), on real sample data:
# create a workspace, ingest real DICOM and NIfTI files, query, freeze a dataset version,
# verify it, export a series to NIfTI, de-identify a real instance; then, on SIMULATED cohorts,
# pretrain (y-aware), probe and train, and write a validation report; finally put a (simulated-data) CT
# lesion model in the inference service, send it a study, review its result and trace it. Run by `make demo`.
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
$SOBRE ingest -w "$WS" "$PYDICOM_DATA" --site demo-site | sed -n 1,2p

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

step "7. de-identify a real CT instance (PS3.15 Basic Profile + research options, keyed pseudonyms)"
CT_SMALL="$($PY -c "from pydicom.data import get_testdata_file; print(get_testdata_file('CT_small.dcm'))")"
$SOBRE deid "$CT_SMALL" "$WS/deid"
show() {
  $SOBRE info "$1" --json | $PY -c '
import json, sys
m = json.load(sys.stdin)["metadata"]
print(sys.argv[1].ljust(8), " | ".join(f"{k} {m.get(k)}" for k in ("patient_id", "institution", "study_date", "patient_age", "patient_sex")))' "$2"
}
show "$CT_SMALL" before
show "$WS/deid" after

step "8. SIMULATED cohorts (labelled as such everywhere): 150 healthy subjects to pretrain on, 120 patients/controls"
$SOBRE simulate brain "$WS/sim/healthy" --subjects 150 --sites 3 --seed 1 --id-prefix H --format bids \
  --resolution 4 --no-truth --jobs 2 | tail -1
$SOBRE simulate brain "$WS/sim/target" --subjects 120 --sites 3 --seed 2 --id-prefix T --format bids \
  --resolution 4 --no-truth --jobs 2 --disease accelerated-ageing --disease-strength 5 | tail -1
$SOBRE ingest -w "$WS" "$WS/sim/healthy" "$WS/sim/target" | sed -n 1,2p
$SOBRE cohort create -w "$WS" sim-healthy --where 'simulated == true and subject_id.startswith("sub-H")'
$SOBRE cohort create -w "$WS" sim-target --where 'simulated == true and subject_id.startswith("sub-T")'
$SOBRE cohort freeze -w "$WS" sim-healthy | sed -n 1p
$SOBRE cohort freeze -w "$WS" sim-target | sed -n 1p

step "9. metadata-aware (y-aware) contrastive pretraining on the unlabelled healthy cohort (CPU)"
RUN_PRE="$($SOBRE pretrain examples/pretrain.toml -w "$WS" --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')"
echo "pretraining run $RUN_PRE (config, dataset hash, code version, seed and encoder SHA-256 in $WS/runs/$RUN_PRE/run.json)"

step "10. patients vs controls: linear probe on the pretrained features, and a CNN from scratch"
sed "s/RUN_ID/$RUN_PRE/" examples/train.toml > "$WS/probe.toml"
$SOBRE probe "$WS/probe.toml" -w "$WS"
sed '/^init_from/d; s/name = "demo-probe"/name = "demo-scratch"/; s/epochs = 5/epochs = 20/' examples/train.toml \
  > "$WS/scratch.toml"
$SOBRE train "$WS/scratch.toml" -w "$WS"
$SOBRE runs list -w "$WS"
echo "(a tiny simulated demo: the comparison that means something is docs/benchmarks/label-efficiency.md)"

step "11. validation report of the probe: bootstrap confidence intervals, subgroups, calibration, limits"
RUN_PROBE="$($SOBRE runs list -w "$WS" --kind probe --json | $PY -c 'import json,sys; print(json.load(sys.stdin)[-1]["run_id"])')"
$SOBRE evaluate "$WS/runs/$RUN_PROBE" --bootstrap 500 --out "$WS/reports/probe" | grep -E "test subjects|auc|limits|simulated|report"

step "12. the inference service: a CT lesion model in service, a study in by C-STORE, SEG/SR/SC out, reviewed, traced"
# The models above classify brain MRI; the service's ct-lesions app needs a CT segmenter. A tiny 3D U-Net is
# trained here on SIMULATED CT phantoms with lesions (the app tests' recipe, ~1 min), registered as a signed package.
RUN_SEG="$($PY - "$WS" <<'PYEOF'
import sys
sys.path.insert(0, "tests")
from apps.helpers import phantom_image, train_tiny_segmenter, write_ct_series  # SIMULATED CT phantoms
from sobre.catalog import Workspace
with Workspace.open(sys.argv[1]) as ws:
    run = train_tiny_segmenter(ws.layout.runs)
    ct, _ = phantom_image((40, 36, 16), seed=7, lesions=2)  # the study sent below: two lesions
    write_ct_series(ws.root / "sim" / "ct-study", ct, series_description="SIMULATED phantom abdomen")
    print(run.name)
PYEOF
)"
$SOBRE model register -w "$WS" "$RUN_SEG" --name ct-lesions-demo --version 1.0 --no-measure \
  --purpose "DEMO ONLY: lesion segmentation trained on simulated CT phantoms" | sed -n 1,2p
echo "model card: $WS/models/ct-lesions-demo/1.0/card/card.md"
read -r SVC_PORT PACS_PORT <<< "$($PY -c '
import socket
ports = []
for _ in range(2):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); ports.append(s.getsockname()[1]); s.close()
print(*ports)')"
# a second local folder plays the PACS: results arrive there by C-STORE
$SOBRE listen --out "$WS/pacs-inbox" --aet DEMOPACS --port "$PACS_PORT" 2> "$WS/pacs.log" &
PACS_PID=$!
$SOBRE service -w "$WS" --app ct-lesions=ct-lesions-demo@1.0 --destination "pacs=DEMOPACS@127.0.0.1:$PACS_PORT" \
  --port "$SVC_PORT" --quiet 2 2> "$WS/service.log" &
SVC_PID=$!
trap 'kill "$SVC_PID" "$PACS_PID" 2>/dev/null || true' EXIT
for _ in $(seq 240); do  # the service loads the model and listens (a few seconds)
  $PY -c "import socket, sys; socket.create_connection(('127.0.0.1', $SVC_PORT), 1)" 2>/dev/null && break
  kill -0 "$SVC_PID" 2>/dev/null || { tail -20 "$WS/service.log"; exit 1; }
  sleep 0.5
done
STUDY_DIR="$WS/sim/ct-study"
echo "sending $(ls "$STUDY_DIR" | wc -l) CT instances (SIMULATED phantom) to the service by C-STORE"
if command -v storescu >/dev/null; then
  storescu -aet DEMO -aec SOBRE 127.0.0.1 "$SVC_PORT" +sd "$STUDY_DIR"
else
  $PY - "$STUDY_DIR" "$SVC_PORT" <<'PYEOF'
import sys, pathlib, pydicom
from pynetdicom import AE, StoragePresentationContexts
ae = AE(ae_title="DEMO"); ae.requested_contexts = StoragePresentationContexts
assoc = ae.associate("127.0.0.1", int(sys.argv[2]), ae_title="SOBRE")
for f in sorted(pathlib.Path(sys.argv[1]).glob("*.dcm")):
    assoc.send_c_store(pydicom.dcmread(f))
assoc.release()
PYEOF
fi
for _ in $(seq 600); do  # quiet period (2 s), the app's run, delivery
  $SOBRE service status -w "$WS" --json 2>/dev/null | $PY -c '
import json, sys
d = json.load(sys.stdin)["deliveries"]
sys.exit(0 if d.get("sent") and not d.get("pending") else 1)' && break
  kill -0 "$SVC_PID" 2>/dev/null || { tail -20 "$WS/service.log"; exit 1; }
  sleep 0.5
done
$SOBRE service status -w "$WS"
echo "arrived in the PACS folder $WS/pacs-inbox:"
$PY - "$WS/pacs-inbox" <<'PYEOF'
import collections, pathlib, sys
import pydicom
kinds = collections.Counter()
for f in pathlib.Path(sys.argv[1]).rglob("*.dcm"):
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    kinds[f"{ds.SOPClassUID.name} ({ds.Modality}) series {ds.SeriesDescription!r}"] += 1
for k, n in sorted(kinds.items()):
    print(f"  {n:3d} x {k}")
PYEOF
$SOBRE review list -w "$WS"
$SOBRE review accept 1 --reviewer dr.demo --comment "checked on the overlay" -w "$WS"
SEG_UID="$($SOBRE review show 1 -w "$WS" --json | $PY -c '
import json, sys
print(next(o["sop_instance_uid"] for o in json.load(sys.stdin)["outputs"] if o["kind"] == "SEG"))')"
echo "the audit trace of that decision (which model produced this SEG from which images, who accepted it):"
$SOBRE service trace "$SEG_UID" -w "$WS"
$SOBRE service export-audit -w "$WS" --out "$WS/audit-xml"
$SOBRE audit verify -w "$WS"
kill "$SVC_PID" "$PACS_PID"
wait "$SVC_PID" "$PACS_PID" 2>/dev/null || true
trap - EXIT

step "summary"
$PY - <<PYEOF
import json
from sobre.catalog import Workspace
with Workspace.open("$WS") as ws:
    print(json.dumps(ws.summary(), indent=2))
PYEOF
