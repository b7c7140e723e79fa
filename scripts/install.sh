#!/usr/bin/env bash
# Creates ./.venv (or $BWTF_VENV) and installs bwtf into it with the CPU TensorFlow,
# the Beam engine for parallel dataset builds, the demo data and the test tools.
# GPU nodes: BWTF_EXTRAS=gpu,beam bash scripts/install.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${BWTF_VENV:-$repo/.venv}"
extras="${BWTF_EXTRAS:-cpu,beam,demo,report,test}"

python="${BWTF_PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.11 python3.10 python3.9 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
  done
fi
if [ -z "$python" ] || ! "$python" -c 'import sys; sys.exit(not ((3, 9) <= sys.version_info[:2] <= (3, 11)))'; then
  echo "install.sh: bwtf needs Python 3.9-3.11 (TensorFlow 2.15); found '${python:-none}'." \
       "Set BWTF_PYTHON=/path/to/python3.11." >&2
  exit 2
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# setuptools 82 removed pkg_resources, which TensorBoard 2.15 (`tensorboard --logdir`) imports.
"$venv/bin/python" -m pip install --quiet --upgrade "pip>=23.2" "setuptools>=68,<82" wheel
"$venv/bin/python" -m pip install --quiet -e "$repo[$extras]"
"$venv/bin/python" -m pip check
echo "install.sh: bwtf installed in $venv with extras [$extras]"
