"""``bwtf-ckpt`` / ``python -m bwtf.ckpt``: list, verify, inspect and prune checkpoints.

  bwtf-ckpt list    <model_dir> [--full] [--json]
  bwtf-ckpt verify  <model_dir or ckpt-N dir> [--json]   exit 1 unless the newest is intact
  bwtf-ckpt inspect <model_dir or ckpt-N dir> [--json]   the run record's summary (model,
                                                          classes, dataset, steps), then the
                                                          variables, shapes, step, size
  bwtf-ckpt prune   <model_dir> --keep_last=5 [--keep_every_hours=H] [--dry_run] [--json]

None of these import TensorFlow: everything comes from the manifests, so the
commands answer in well under a second even on a login node.

Exit codes:
  0   done
  1   verify: the newest checkpoint is not intact
  2   bad input: no such model_dir, no intact checkpoint to inspect (one line)
"""
import dataclasses
import json

from absl import flags

import bwtf
from bwtf import program
from bwtf.ckpt import commit
from bwtf.ckpt import errors
from bwtf.ckpt import policy as policy_lib
from bwtf.ckpt import retention
from bwtf.ckpt import run_record

_JSON = flags.DEFINE_bool("json", False, "Print machine-readable JSON.")
_FULL = flags.DEFINE_bool(
    "full", False, "list: also check every file's checksum (reads every byte).")
_KEEP_LAST = flags.DEFINE_integer("keep_last", 5, "prune: keep this many newest intact.")
_KEEP_EVERY_HOURS = flags.DEFINE_float(
    "keep_every_hours", None, "prune: also keep one checkpoint per this many hours.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "prune: only print what would go.")

_USAGE = "bwtf-ckpt {list,verify,inspect,prune} PATH [flags]"
EXIT_NOT_INTACT = bwtf.EXIT_FAILED


def _emit(as_json, data, lines):
    print(json.dumps(data, indent=1, sort_keys=True) if as_json else "\n".join(lines))


def _is_checkpoint_dir(path):
    return commit.step_of(str(path).rstrip("/").rsplit("/", 1)[-1]) is not None


def _require_model_dir(path):
    """A missing model_dir is a typo to report, not an empty listing."""
    store = commit.as_storage(path)
    if not store.isdir(store.root):
        raise errors.CheckpointError(f"{path} does not exist or is not a directory; "
                                     "pass the --model_dir of a training run")


def cmd_list(path, as_json, full):
    _require_model_dir(path)
    statuses = commit.list_checkpoints(path, full=full)
    lines = [f"{s.step:>10}  {'intact ' if s.intact else 'BROKEN '} {s.size_bytes:>14}  "
             f"{s.directory}{'  (' + s.reason + ')' if s.reason else ''}" for s in statuses]
    _emit(as_json, [dataclasses.asdict(s) for s in statuses],
          lines or [f"no checkpoints in {path}"])
    return 0


def cmd_verify(path, as_json):
    if _is_checkpoint_dir(path):
        store = commit.as_storage(str(path).rstrip("/").rpartition("/")[0] or "/")
        statuses = [commit.check(store, store.path(str(path).rstrip("/").rsplit("/", 1)[-1]))]
    else:
        _require_model_dir(path)
        statuses = commit.list_checkpoints(path, full=True)
    newest = statuses[-1] if statuses else None
    ok = newest is not None and newest.intact
    lines = [f"{'OK     ' if s.intact else 'BROKEN '} {s.directory}"
             f"{'  (' + s.reason + ')' if s.reason else ''}" for s in statuses]
    if newest is None:
        lines = [f"no checkpoints in {path}"]
    _emit(as_json, {"intact": ok, "checkpoints": [dataclasses.asdict(s) for s in statuses]},
          lines)
    return 0 if ok else EXIT_NOT_INTACT


def cmd_inspect(path, as_json):
    if _is_checkpoint_dir(path):
        directory = str(path).rstrip("/")
        record = run_record.read_record(directory.rpartition("/")[0] or "/")
    else:
        record = run_record.read_record(path)
        ref = commit.latest_intact_checkpoint(path)
        if ref is None:
            raise errors.CheckpointError(f"{path} holds no intact checkpoint to inspect")
        directory = ref.directory
    parent, _, name = directory.rpartition("/")
    store = commit.as_storage(parent or "/")
    status = commit.check(store, store.path(name), full=False)
    if not status.intact:
        raise errors.CorruptCheckpointError(f"{status.directory}: {status.reason}")
    manifest = commit.read_manifest(store, store.path(name))
    variables = manifest.get("variables", {})
    data = {"directory": status.directory, "step": status.step, "size_bytes": status.size_bytes,
            "variables": variables}
    if record is not None:
        data["run_record"] = record.data
    lines = run_record.summary_lines(record.data) if record else ["run record: none (written before bwtf "
                                                                  "recorded its runs)"]
    lines += [f"checkpoint {status.directory}", f"step {status.step}",
             f"size {status.size_bytes} bytes", f"{len(variables)} variables:"]
    lines += [f"  {n}  {v.get('dtype')}  {v.get('shape')}" for n, v in sorted(variables.items())]
    _emit(as_json, data, lines)
    return 0


def cmd_prune(path, as_json, keep_last, keep_every_hours, dry_run):
    _require_model_dir(path)
    policy = policy_lib.CheckpointPolicy(keep_last=keep_last, keep_every_hours=keep_every_hours)
    removed = retention.prune(path, policy, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    _emit(as_json, {"removed": removed, "dry_run": dry_run},
          [f"{verb} {p}" for p in removed] or ["nothing to remove"])
    return 0


def dispatch(argv):
    """Runs one command; returns the exit status. argv excludes the program name."""
    if len(argv) != 2 or argv[0] not in ("list", "verify", "inspect", "prune"):
        raise bwtf.UserError(f"expected a command and a path, found {' '.join(argv) or 'nothing'}; "
                             f"usage: {_USAGE}")
    command, path = argv
    if command == "list":
        return cmd_list(path, _JSON.value, _FULL.value)
    if command == "verify":
        return cmd_verify(path, _JSON.value)
    if command == "inspect":
        return cmd_inspect(path, _JSON.value)
    return cmd_prune(path, _JSON.value, _KEEP_LAST.value, _KEEP_EVERY_HOURS.value, _DRY_RUN.value)


PROGRAM = program.Program(
    name="bwtf-ckpt", doc=__doc__, usage=_USAGE,
    flag_groups=(("Output", [_JSON, _FULL]), ("prune", [_KEEP_LAST, _KEEP_EVERY_HOURS, _DRY_RUN])),
    args=(0, None))


def run():
    program.run(dispatch, PROGRAM)


if __name__ == "__main__":
    run()
