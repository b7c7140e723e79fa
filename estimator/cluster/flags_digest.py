"""One digest of a task's command line, flag files included, so tasks can prove they agree.

Every task of a job must train the same model with the same settings; a flag
file edited between the submission and a task's start, or a node that sees an
older copy of it, silently gives tasks different settings. The launcher (or the
batch script) computes the digest once and passes it to every task; the task
recomputes it from what it reads itself and refuses to start on a mismatch,
naming the file that differs.

Deliberately left out: parsing flag values (only absl knows the defined flags;
text equality is the stronger and simpler check) and flags that legitimately
differ per task (the launchers pass the role through the environment, never as
flags).
"""
import hashlib
import os

import bwtf

_FLAGFILE = "--flagfile="


class FlagsMismatchError(bwtf.UserError, ValueError):
    """This task's flags differ from those the launcher saw."""


def _flagfile_lines(path, seen):
    """The lines of ``path``, with nested --flagfile lines expanded (once each)."""
    real = os.path.realpath(path)
    if real in seen:
        return []
    seen.add(real)
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except OSError as error:
        raise FlagsMismatchError(
            f"cannot read flag file {path}: {error.strerror}; every task must see it at the same path"
        ) from None
    expanded = []
    for line in lines:
        if not line or line.startswith(("#", "//")):
            continue
        expanded.append(line)
        if line.startswith(_FLAGFILE):
            expanded.extend(_flagfile_lines(line[len(_FLAGFILE):], seen))
    return expanded


def expanded_args(argv):
    """``argv`` with every flag file's lines inserted after its --flagfile argument."""
    expanded, seen = [], set()
    for arg in argv:
        expanded.append(arg)
        if arg.startswith(_FLAGFILE):
            expanded.extend(_flagfile_lines(arg[len(_FLAGFILE):], seen))
    return expanded


def file_digests(argv):
    """[(item, sha256)]: one entry per argument, a flag file's entry covers its content."""
    entries, seen = [], set()
    for arg in argv:
        text = arg
        if arg.startswith(_FLAGFILE):
            text = "\n".join([arg] + _flagfile_lines(arg[len(_FLAGFILE):], seen))
        entries.append((arg, hashlib.sha256(text.encode("utf-8")).hexdigest()))
    return entries


def flags_digest(argv):
    """A short hex digest of ``argv`` with every flag file's content expanded."""
    combined = hashlib.sha256()
    for _, digest in file_digests(argv):
        combined.update(digest.encode("ascii"))
    return combined.hexdigest()[:16]


def check_flags_digest(argv, expected, task_name):
    """Raises FlagsMismatchError unless ``argv`` hashes to ``expected``."""
    found = flags_digest(argv)
    if found == expected:
        return
    flag_files = [arg for arg, _ in file_digests(argv) if arg.startswith(_FLAGFILE)]
    raise FlagsMismatchError(
        f"{task_name}: its flags digest is {found} but the launcher computed {expected}; "
        f"the flag file(s) {', '.join(flag_files) or '(none)'} or the command line differ from what "
        "the other tasks use. Make every task read identical flag files (a shared path, not "
        "per-node copies) and do not edit them while a job starts."
    )
