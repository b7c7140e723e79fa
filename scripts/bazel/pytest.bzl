"""`pytest_test`: a native `py_test` that runs its test file with pytest.

bwtf's tests are pytest modules (fixtures, conftest.py, parametrize), which do
nothing when run as plain scripts. Each `pytest_test` is one `py_test` whose
main is //scripts/bazel:pytest_main.py and whose argument is the test file, so
`bazel test` fails exactly when `pytest <that file>` fails.

List the conftest libraries the test needs in `deps` (`//tests:conftest`, and
the area's own `:conftest` when it has one); tests/test_layout_bazel.py checks
that each test lists every conftest.py above it.
"""

_RUNNER = "//scripts/bazel:pytest_main.py"

def pytest_test(name, srcs, deps = [], data = [], args = [], **attrs):
    native.py_test(
        name = name,
        srcs = srcs + [_RUNNER],
        main = _RUNNER,
        args = ["$(location %s)" % src for src in srcs] + args,
        deps = deps,
        # pyproject.toml holds pytest's options and the `slow` marker that
        # --strict-markers insists on.
        data = data + ["//:pyproject.toml"],
        python_version = "PY3",
        srcs_version = "PY3",
        **attrs
    )
