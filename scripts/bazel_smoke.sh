#!/usr/bin/env bash
# Bazel smoke test, offline: analyses every target, then runs the Bazel checks.
#
#   bash scripts/bazel_smoke.sh                 # the smoke set (about a minute)
#   bash scripts/bazel_smoke.sh //tests/...     # or any targets, e.g. every test
#
# 1. Installs Bazel (the version in .bazelversion, 2.1.0) from the npm registry
#    into $BWTF_BAZEL_PREFIX (default ~/.cache/bwtf-bazel/<version>) unless it is
#    there already. The npm package @bazel/bazel-linux_x64 offers no release
#    newer than 2.1.0, which runs in WORKSPACE mode (there is no Bzlmod).
#    $BAZEL names another Bazel binary instead; $BWTF_BAZEL_OUTPUT_ROOT moves
#    Bazel's output tree (default ~/.cache/bazel).
# 2. `bazel build //...`: every BUILD file loads and every target analyses, so
#    each listed file exists and each dep exists and is visible to its user.
# 3. `bazel test` of the smoke set: the BUILD-vs-tree check, the runfiles checks
#    (import bwtf.ckpt from the runfiles, the venv's TensorFlow 2.15) and one
#    area's unit tests (bwtf.ckpt's commit protocol) run the Bazel way.
#
# Offline: nothing is downloaded. The repositories Bazel would fetch (rules_cc,
# rules_java, remote_coverage_tools) are stand-ins in scripts/bazel/offline/, and
# Bazel runs with an unreachable HTTP(S) proxy so that any download it still
# tried would fail here, loudly, even on a machine that has network access.
#
# Python: the targets run with the project venv ($BWTF_VENV, default ./.venv, as
# made by scripts/install.sh), registered as the toolchain by WORKSPACE. Its bin/
# goes first on PATH because Bazel 2.1's Python launcher starts with
# `#!/usr/bin/env python`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${BWTF_VENV:-$repo/.venv}"
version="$(tr -d '[:space:]' < .bazelversion)"
smoke_targets=(//tests:test_layout_bazel //tests/bazel:test_bazel_runfiles //tests/ckpt:test_ckpt_commit)

if [ ! -x "$venv/bin/python" ]; then
  echo "bazel_smoke.sh: expected the project venv at $venv (bash scripts/install.sh creates it," \
       "or set BWTF_VENV); found no $venv/bin/python." >&2
  exit 2
fi

bazel="${BAZEL:-}"
if [ -z "$bazel" ]; then
  if [ "$(uname -sm)" != "Linux x86_64" ]; then
    echo "bazel_smoke.sh: the npm package @bazel/bazel-linux_x64 runs on Linux x86_64 only;" \
         "this is $(uname -sm). Set BAZEL=/path/to/bazel-$version." >&2
    exit 2
  fi
  prefix="${BWTF_BAZEL_PREFIX:-$HOME/.cache/bwtf-bazel/$version}"
  bazel="$prefix/node_modules/@bazel/bazel-linux_x64/bazel-$version-linux-x86_64"
  if [ ! -x "$bazel" ]; then
    if ! command -v npm >/dev/null 2>&1; then
      echo "bazel_smoke.sh: installing Bazel $version needs npm (Debian: apt-get install npm);" \
           "found none on PATH. Or set BAZEL=/path/to/bazel-$version." >&2
      exit 2
    fi
    echo "== installing Bazel $version from npm into $prefix"
    npm install --prefix "$prefix" --no-save --no-audit --no-fund --loglevel=error \
      "@bazel/bazel-linux_x64@$version"
  fi
fi

export PATH="$venv/bin:$PATH"
# Port 9 (discard) refuses connections: a download attempt fails at once.
export HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9
export http_proxy="$HTTP_PROXY" https_proxy="$HTTPS_PROXY"
startup=(--max_idle_secs=300)
# Bazel keeps its server and outputs in ~/.cache/bazel unless told otherwise.
[ -z "${BWTF_BAZEL_OUTPUT_ROOT:-}" ] || startup+=("--output_user_root=$BWTF_BAZEL_OUTPUT_ROOT")
# The server is this script's own: stop it however the script ends.
trap '"$bazel" "${startup[@]}" shutdown >/dev/null 2>&1 || true' EXIT
# Two cores in CI, shared with nothing else while this runs.
resources=(--jobs=2 --local_cpu_resources=2)

echo "== $bazel build //... (Bazel $version, offline)"
"$bazel" "${startup[@]}" build "${resources[@]}" //...

targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=("${smoke_targets[@]}")
echo "== $bazel test ${targets[*]}"
"$bazel" "${startup[@]}" test "${resources[@]}" "${targets[@]}"
