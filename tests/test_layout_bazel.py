"""The BUILD files and the source tree agree: every module and test has a target, every target a file.

Bazel itself is not needed: the BUILD files are Starlark, whose syntax is a subset
of Python's, so they are executed here with stand-ins for the few rules bwtf uses,
which only record the targets. Then three things are checked:
- every module (``*.py`` at the root and under estimator/, data/, ckpt/) is in the
  ``srcs`` of exactly one ``py_library`` of its Bazel package (the nearest folder
  above it with a BUILD file, as Bazel decides), and every ``tests/**/test_*.py``
  in the ``srcs`` of one ``py_test`` (``pytest_test`` is bwtf's py_test macro);
- every file a target names exists (``data`` may also name a target), and every
  ``//...`` or ``:name`` dependency is a target that some BUILD file defines;
- every test depends, directly or not, on each conftest.py above it (else its
  fixtures are missing under Bazel), every conftest.py is a ``py_library``, and
  every other ``*.py`` under tests/ and scripts/ (a helper a test imports or
  starts, a benchmark) is named by some target.

Deliberately left out: whether the deps match the imports (running the targets
under Bazel shows that; see scripts/bazel_smoke.sh) and BUILD files of the offline
stand-in repositories in scripts/bazel/offline/, which are not bwtf packages.
"""
import dataclasses
import pathlib
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_MODULE_FOLDERS = ("estimator", "data", "ckpt")
# Not bwtf sources: the venv, build output, caches, and the offline stand-in
# repositories (their BUILD files belong to other Bazel repositories).
_SKIPPED_PATHS = {".venv", ".venv-tf221", ".git", ".pytest_cache", "build", "dist", "demo-out", "scripts/bazel/offline"}
_TEST_RULES = ("py_test", "pytest_test")


@dataclasses.dataclass
class Target:
    package: str  # "" for the root package, else e.g. "ckpt" or "tests/ckpt"
    kind: str
    name: str
    srcs: list
    deps: list
    files: list  # every file label the target names: srcs, data, main

    @property
    def label(self):
        return f"//{self.package}:{self.name}"


def _build_path(package):
    return f"{package}/BUILD" if package else "BUILD"


def _rule(kind, package, targets):
    def record(name, srcs=(), deps=(), data=(), main=None, **_):
        files = list(srcs) + list(data) + ([main] if main else [])
        targets.append(Target(package, kind, name, list(srcs), list(deps), files))

    return record


def _glob(folder):
    def glob(include, exclude=(), **_):
        # Like Bazel's glob: files only, relative to the BUILD file's folder.
        found = {str(p.relative_to(folder)) for pattern in include for p in folder.glob(pattern) if p.is_file()}
        dropped = {str(p.relative_to(folder)) for pattern in exclude for p in folder.glob(pattern)}
        return sorted(found - dropped)

    return glob


def _read_build_file(root, build_file):
    """The targets one BUILD file defines, from executing it with recording stand-ins."""
    folder = str(build_file.parent.relative_to(root))
    package = "" if folder == "." else folder
    targets = []
    namespace = {kind: _rule(kind, package, targets)
                 for kind in ("py_library", "py_binary", "filegroup") + _TEST_RULES}
    namespace.update(
        load=lambda *args, **kwargs: None,
        package=lambda **kwargs: None,
        exports_files=lambda files, **kwargs: targets.extend(
            Target(package, "exports_files", f, [], [], [f]) for f in files),
        glob=_glob(build_file.parent),
    )
    try:
        exec(compile(build_file.read_text(), str(build_file), "exec"), namespace)
    except NameError as error:
        pytest.fail(f"{build_file.relative_to(root)}: {error}; tests/test_layout_bazel.py models only "
                    "the rules bwtf uses, add a stand-in for the new one there")
    return targets


def _walk(root, folder=None):
    """Every file below root but those in _SKIPPED_PATHS, caches and bazel-* symlinks."""
    for path in sorted((folder or root).iterdir()):
        relative = path.relative_to(root).as_posix()
        if (relative in _SKIPPED_PATHS or path.name == "__pycache__" or path.name.endswith(".egg-info")
                or path.name.startswith("bazel-")):
            continue
        if path.is_dir():
            yield from _walk(root, path)
        else:
            yield path


def _project_files(root):
    files = [p.relative_to(root) for p in _walk(root)]
    build_files = [f for f in files if f.name == "BUILD"]
    modules = [f for f in files if f.suffix == ".py" and (
        (len(f.parts) == 1 and f.name != "setup.py") or f.parts[0] in _MODULE_FOLDERS)]
    tests = [f for f in files if f.parts[0] == "tests" and f.name.startswith("test_") and f.suffix == ".py"]
    conftests = [f for f in files if f.parts[0] == "tests" and f.name == "conftest.py"]
    # Test helpers (a module a test imports, a program it starts) and scripts.
    helpers = [f for f in files if f.suffix == ".py" and f not in tests + conftests and (
        f.parts[0] == "tests" or f.parts[0] == "scripts")]
    return build_files, modules, tests, conftests, helpers


def _helper_problems(helpers, packages, targets):
    """Helpers and scripts reach the runfiles only through a target that names them."""
    problems = []
    for helper in helpers:
        package = _package_of(helper, packages)
        relative = str(helper.relative_to(package)) if package else str(helper)
        if not any(t.package == package and relative in t.files for t in targets):
            problems.append(f"{helper} is named by no target in {_build_path(package)}; "
                            "make it a py_library or py_binary there")
    return problems


def _package_of(path, packages):
    """The Bazel package that owns path: its nearest ancestor folder with a BUILD file."""
    for folder in path.parents:
        package = "" if str(folder) == "." else str(folder)
        if package in packages:
            return package
    return None


def _owners(path, kinds, packages, targets):
    """(package, the targets of those kinds whose srcs hold path) under Bazel's package rule."""
    package = _package_of(path, packages)
    if package is None:
        return None, []
    relative = str(path.relative_to(package)) if package else str(path)
    return package, [t for t in targets if t.package == package and t.kind in kinds and relative in t.srcs]


def _owner_problems(paths, kinds, what, packages, targets):
    problems = []
    for path in paths:
        package, owners = _owners(path, kinds, packages, targets)
        if package is None:
            problems.append(f"{path} has no {what}: no BUILD file in {path.parent}/ or any folder above it")
        elif not owners:
            problems.append(f"{path} has no {what} in {_build_path(package)}")
        elif len(owners) > 1:
            names = ", ".join(t.name for t in owners)
            problems.append(f"{path} is in the srcs of several targets in {_build_path(package)}: {names}")
    return problems


def _resolve(label, package):
    """(package, name) of a label written inside package; None for other repositories."""
    if label.startswith("@"):
        return None
    if label.startswith(":"):
        return package, label[1:]
    if label.startswith("//"):
        path, _, name = label[2:].partition(":")
        return path, name or path.rsplit("/", 1)[-1]
    return package, label


def _reference_problems(root, targets):
    problems = []
    defined = {(t.package, t.name) for t in targets}
    for target in targets:
        where = f"{_build_path(target.package)}: target {target.name}"
        for file_label in target.files:
            package, name = _resolve(file_label, target.package)
            # data may also name a target, e.g. a script's py_binary.
            if not (root / package / name).is_file() and (package, name) not in defined:
                problems.append(f"{where} names {file_label}, but {pathlib.PurePath(package, name)} does not exist")
        for dep in target.deps:
            resolved = _resolve(dep, target.package)
            if resolved is not None and resolved not in defined:
                problems.append(f"{where} depends on {dep}, which no BUILD file defines")
    return problems


def _closure(target, targets):
    """(package, name) of every target that target depends on, directly or not."""
    by_key = {(t.package, t.name): t for t in targets}
    seen, todo = set(), [target]
    while todo:
        current = todo.pop()
        for key in {_resolve(dep, current.package) for dep in current.deps} - {None} - seen:
            seen.add(key)
            if key in by_key:
                todo.append(by_key[key])
    return seen


def _conftest_problems(tests, conftests, packages, targets):
    problems = _owner_problems(conftests, ("py_library",), "py_library", packages, targets)
    for test in tests:
        package, owners = _owners(test, _TEST_RULES, packages, targets)
        for owner in owners:
            deps = _closure(owner, targets)
            for conftest in (c for c in conftests if c.parent in test.parents):
                _, libraries = _owners(conftest, ("py_library",), packages, targets)
                if libraries and not any((lib.package, lib.name) in deps for lib in libraries):
                    problems.append(f"{_build_path(package)}: {owner.name} does not depend on "
                                    f"{libraries[0].label} ({conftest}), so its fixtures are missing under Bazel")
    return problems


def build_problems(root):
    """Every disagreement between root's BUILD files and its files, as one message each."""
    build_files, modules, tests, conftests, helpers = _project_files(root)
    targets = [t for build_file in build_files for t in _read_build_file(root, root / build_file)]
    packages = {"" if str(f.parent) == "." else str(f.parent) for f in build_files}
    return (_owner_problems(modules, ("py_library",), "py_library", packages, targets)
            + _owner_problems(tests, _TEST_RULES, "py_test", packages, targets)
            + _conftest_problems(tests, conftests, packages, targets)
            + _helper_problems(helpers, packages, targets)
            + _reference_problems(root, targets))


def test_build_files_agree_with_the_tree():
    problems = build_problems(REPO)
    assert not problems, "BUILD files and tree disagree:\n  " + "\n  ".join(problems)


def test_every_area_has_its_build_file():
    for folder in ("", "estimator", "estimator/models", "data", "ckpt", "tests"):
        assert (REPO / folder / "BUILD").is_file(), f"{_build_path(folder)} is missing"


def test_workspace_is_named_bwtf_and_ignores_the_venv():
    # The name makes the runfiles tree <runfiles>/bwtf, where `import bwtf` resolves.
    assert 'workspace(name = "bwtf")' in (REPO / "WORKSPACE").read_text()
    ignored = (REPO / ".bazelignore").read_text().split()
    assert {".venv", ".venv-tf221"} <= set(ignored), "Bazel would scan the virtualenvs in the checkout as packages"


_GOOD_TREE = {
    "__init__.py": "",
    "BUILD": 'py_library(name = "bwtf", srcs = ["__init__.py"])\nexports_files(["pyproject.toml"])\n',
    "pyproject.toml": "",
    "data/__init__.py": "",
    "data/archive.py": "",
    "data/BUILD": textwrap.dedent("""\
        py_library(name = "init", srcs = ["__init__.py"], deps = ["//:bwtf"])
        py_library(name = "archive", srcs = ["archive.py"], deps = [":init"])
        """),
    "tests/conftest.py": "",
    "tests/BUILD": 'py_library(name = "conftest", srcs = ["conftest.py"])\n',
    "tests/data/test_data_archive.py": "",
    "tests/data/BUILD": textwrap.dedent("""\
        load("//scripts/bazel:pytest.bzl", "pytest_test")
        pytest_test(name = "test_data_archive", srcs = ["test_data_archive.py"],
                    deps = ["//data:archive", "//tests:conftest"], data = ["//:pyproject.toml"])
        """),
}


def _tree(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_tree_that_agrees_has_no_problems(tmp_path):
    assert build_problems(_tree(tmp_path, _GOOD_TREE)) == []


@pytest.mark.parametrize("change, expected", [
    pytest.param({"data/images.py": ""}, "data/images.py has no py_library in data/BUILD",
                 id="module-without-library"),
    pytest.param({"tests/data/test_data_images.py": ""},
                 "tests/data/test_data_images.py has no py_test in tests/data/BUILD", id="test-without-py_test"),
    pytest.param({"data/BUILD": _GOOD_TREE["data/BUILD"] + 'py_library(name = "gone", srcs = ["gone.py"])\n'},
                 "data/BUILD: target gone names gone.py, but data/gone.py does not exist", id="target-without-file"),
    pytest.param({"data/BUILD": _GOOD_TREE["data/BUILD"] + 'py_library(name = "again", srcs = ["archive.py"])\n'},
                 "data/archive.py is in the srcs of several targets in data/BUILD: archive, again",
                 id="module-in-two-libraries"),
    pytest.param({"tests/data/BUILD": _GOOD_TREE["tests/data/BUILD"].replace("//data:archive", "//data:achive")},
                 "tests/data/BUILD: target test_data_archive depends on //data:achive, which no BUILD file defines",
                 id="dep-without-target"),
    pytest.param({"tests/data/conftest.py": ""}, "tests/data/conftest.py has no py_library in tests/data/BUILD",
                 id="conftest-without-library"),
    pytest.param({"tests/data/BUILD": _GOOD_TREE["tests/data/BUILD"].replace(', "//tests:conftest"', "")},
                 "tests/data/BUILD: test_data_archive does not depend on //tests:conftest (tests/conftest.py), "
                 "so its fixtures are missing under Bazel", id="test-without-conftest"),
    pytest.param({"ckpt/saver.py": ""}, "ckpt/saver.py has no py_library in BUILD", id="folder-without-BUILD"),
    pytest.param({"tests/data/worker.py": ""},
                 "tests/data/worker.py is named by no target in tests/data/BUILD; "
                 "make it a py_library or py_binary there", id="helper-without-target"),
])
def test_each_disagreement_is_named(tmp_path, change, expected):
    problems = build_problems(_tree(tmp_path, {**_GOOD_TREE, **change}))
    assert expected in problems, problems
