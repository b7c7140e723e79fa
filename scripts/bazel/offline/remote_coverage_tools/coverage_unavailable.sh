#!/bin/sh
echo "bwtf's offline Bazel setup has no coverage tools (scripts/bazel/offline/remote_coverage_tools is a stand-in); use 'bazel test', or pytest --cov outside Bazel." >&2
exit 1
