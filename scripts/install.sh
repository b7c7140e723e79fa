#!/usr/bin/env bash
# Creates ./.venv (or $BWTF_VENV) and installs bwtf into it with the CPU TensorFlow 2.15,
# the Beam engine for parallel dataset builds, the demo data and the test tools.
# GPU nodes: BWTF_EXTRAS=gpu,beam bash scripts/install.sh
# TensorFlow 2.21 (no tf.estimator; bwtf's own runner): BWTF_EXTRAS=cpu-tf221,demo,report,test
# (or gpu-tf221,...). The beam extra cannot be installed beside 2.21 (apache-beam 2.60 needs
# protobuf < 4.26; TensorFlow 2.21 needs >= 6.31.1).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BWTF_VENV:-$repo/.venv}"
extras="${BWTF_EXTRAS:-cpu,beam,demo,report,test}"

# One TensorFlow extra; its version decides the Python versions that can run it.
tensorflow_extras="$(tr ',' '\n' <<<"$extras" | grep -E '^(cpu|gpu)(-tf221)?$' || true)"
if [ "$(grep -c . <<<"$tensorflow_extras")" -gt 1 ]; then
  echo "install.sh: BWTF_EXTRAS=$extras names more than one TensorFlow extra ($(tr '\n' ' ' <<<"$tensorflow_extras"| sed 's/ $//'));" \
       "keep one of cpu, gpu (TensorFlow 2.15), cpu-tf221, gpu-tf221 (TensorFlow 2.21)." >&2
  exit 2
fi
if grep -q -- '-tf221$' <<<"$tensorflow_extras"; then
  if tr ',' '\n' <<<"$extras" | grep -qx beam; then
    echo "install.sh: the beam extra cannot be installed beside TensorFlow 2.21 (apache-beam 2.60 needs" \
         "protobuf < 4.26, TensorFlow 2.21 needs >= 6.31.1); drop beam from BWTF_EXTRAS=$extras, and" \
         "build datasets across nodes from a TensorFlow 2.15 environment." >&2
    exit 2
  fi
  oldest=10 newest=13 candidates="python3.13 python3.12 python3.11 python3.10 python3" tf=2.21
else
  oldest=9 newest=11 candidates="python3.11 python3.10 python3.9 python3" tf=2.15
fi

fits() { "$1" -c "import sys; sys.exit(not ((3, $oldest) <= sys.version_info[:2] <= (3, $newest)))" 2>/dev/null; }
python="${BWTF_PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in $candidates; do
    if command -v "$candidate" >/dev/null 2>&1 && fits "$candidate"; then python="$candidate"; break; fi
  done
fi
if [ -z "$python" ] || ! fits "$python"; then
  echo "install.sh: bwtf needs Python 3.$oldest-3.$newest (TensorFlow $tf); found '${python:-none}'." \
       "Set BWTF_PYTHON=/path/to/python3.$newest." >&2
  exit 2
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# setuptools 82 removed pkg_resources, which TensorBoard 2.15 (`tensorboard --logdir`) imports.
"$venv/bin/python" -m pip install --quiet --upgrade "pip>=23.2" "setuptools>=68,<82" wheel
"$venv/bin/python" -m pip install --quiet -e "$repo[$extras]"
"$venv/bin/python" -m pip check
echo "install.sh: bwtf installed in $venv with extras [$extras]"
