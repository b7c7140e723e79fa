"""Runs pytest test files as one Bazel py_test (the `main` of every `pytest_test`).

The test files arrive as arguments, relative to the runfiles tree of the main
repository (`<runfiles>/bwtf`), which is also Bazel's working directory for the
test. pytest finds bwtf's pyproject.toml (markers, options) and the conftest.py
files there because `pytest_test` puts them in the runfiles.

Before pytest starts, two import paths that Bazel or the dev venv add are taken
away, so that a Bazel test sees bwtf only as the package its BUILD deps provide:
- `<runfiles>/bwtf` itself, which Bazel 2.1's launcher always puts on sys.path
  and PYTHONPATH: it would make bwtf's `data`, `estimator` and `ckpt` importable
  as top-level packages, which bwtf promises never to do;
- the editable-install finder of a venv made with `pip install -e`, which would
  quietly serve any module a BUILD file forgot to list from the source tree.

Deliberately left out: test sharding and pytest plugins beyond the venv's own.
"""
import os
import pathlib
import sys

_EDITABLE_FINDER_PREFIX = "__editable___bwtf"


def _runfiles_dir():
    runfiles = os.environ.get("PYTHON_RUNFILES") or os.environ.get("RUNFILES_DIR")
    if runfiles:
        return pathlib.Path(runfiles)
    # <runfiles>/bwtf/scripts/bazel/pytest_main.py, without resolving symlinks.
    return pathlib.Path(os.path.abspath(__file__)).parents[3]


def _without_entry(entries, unwanted):
    return [entry for entry in entries if os.path.abspath(entry or ".") != unwanted]


def _hide_repository_root(runfiles):
    unwanted = str(runfiles / "bwtf")
    sys.path[:] = _without_entry(sys.path, unwanted)
    python_path = os.environ.get("PYTHONPATH", "")
    if python_path:
        kept = _without_entry(python_path.split(os.pathsep), unwanted)
        os.environ["PYTHONPATH"] = os.pathsep.join(kept)


def _drop_editable_finder():
    sys.meta_path[:] = [
        finder for finder in sys.meta_path
        if not getattr(finder, "__module__", "").startswith(_EDITABLE_FINDER_PREFIX)
    ]


def _pytest_args(test_files):
    args = list(test_files) + ["-p", "no:cacheprovider", "-ra"]
    # The runfiles tree is read-only and the sandbox may not let /tmp be
    # written: pytest's tmp_path and the cache must live in Bazel's own dirs.
    test_tmpdir = os.environ.get("TEST_TMPDIR")
    if test_tmpdir:
        os.environ["TMPDIR"] = test_tmpdir
        args += ["--basetemp", os.path.join(test_tmpdir, "pytest")]
    xml_output = os.environ.get("XML_OUTPUT_FILE")
    if xml_output:
        args.append("--junitxml=" + xml_output)
    return args


def main(argv):
    test_files = argv[1:]
    if not test_files:
        sys.exit("pytest_main.py: expected the test files to run as arguments, got none; "
                 "declare the test with pytest_test() from //scripts/bazel:pytest.bzl.")
    _hide_repository_root(_runfiles_dir())
    _drop_editable_finder()
    import pytest  # After the path clean-up, so pytest's own imports see it too.

    # pytest exits 5 when it collected nothing: a failure here, as in .ci/run.
    return pytest.main(_pytest_args(test_files))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
