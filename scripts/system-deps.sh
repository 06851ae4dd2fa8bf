#!/usr/bin/env bash
# Debian packages used by tests and benchmarks: real peers Sobre is checked against.
#   dcm2niix            reference DICOM -> NIfTI converter (geometry tests)
#   dcmtk               real DICOM network clients and dcmdump (PACS and de-identification tests)
#   orthanc, orthanc-dicomweb   a real PACS with DICOMweb (PACS tests)
#   postgresql          the team database backend (catalog tests)
#   dicom3tools         dciodvfy: IOD conformance of the SEG, SR and SC Sobre writes (image and apps tests)
#   chromium, fonts-dejavu-core   the browser the workstation tests (tests/web) drive with Playwright
#                       (headless, software WebGL2; Playwright never downloads a browser of its own)
# Installed with apt-get when this user is root (or has password-less sudo); otherwise the tests
# that need them skip with a message saying which package is missing.
set -uo pipefail
PKGS="dcm2niix dcmtk orthanc orthanc-dicomweb postgresql dicom3tools chromium fonts-dejavu-core"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
  echo "system packages: all present ($PKGS)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system packages missing:$missing (no apt-get here; tests needing them will skip)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "system packages missing:$missing (not root; install them to run every test)" >&2
    exit 0
  fi
fi
echo "installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
# services must not start on install (no init system in containers; tests start their own servers)
created_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
$SUDO apt-get update -qq || true
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null || \
  echo "apt-get install failed for:$missing (tests needing them will skip)" >&2
[ -n "$created_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
exit 0
