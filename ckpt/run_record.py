"""The run record: ``<model_dir>/run.json``, the model_dir's description of itself.

    write_record(model_dir, record) -> digest        # the chief, before its first checkpoint
    read_record(model_dir) -> RunRecord | None       # None: a model_dir from before records
    digest_of(data) -> "sha256:<hex>"
    manifest_digest(checkpoint_directory) -> "sha256:<hex>"
    summary_lines(record) -> [str]                   # what ``bwtf-ckpt inspect`` shows

The record is indented JSON a user can read (the model, the settings that
shape its graph, the dataset and its class list, the flags, the cluster); what
goes into it is the training program's business (``bwtf.estimator.evaluation.
run_record``). This module owns only the file: its format marker and version,
the atomic write (``storage.Storage.write_atomic``: readers see the old or the
new whole file), and the checks a reader needs before trusting it. Each
checkpoint's manifest names the record's digest (``extra.run_record``), so a
``run.json`` copied in from another model_dir is refused: the digest the
newest checkpoint names differs from the file's.

Deliberately left out: the record's content and how flags are checked against
it.
"""
import dataclasses
import hashlib
import json

from bwtf.ckpt import commit, errors

RECORD_FILE = "run.json"
FORMAT = "bwtf-run"
FORMAT_VERSION = 1
MANIFEST_KEY = "run_record"  # under "extra" in each MANIFEST.json


class RunRecordError(errors.CheckpointError):
    """run.json is unusable: truncated, from a newer bwtf, or not this model_dir's."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """A parsed run.json: ``data`` as written, ``digest`` of its bytes."""

    path: str
    data: dict
    digest: str


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def encode(record):
    """The bytes written for ``record`` (format marker added)."""
    full = dict(record, format=FORMAT, format_version=FORMAT_VERSION)
    return (json.dumps(full, indent=2, sort_keys=True) + "\n").encode("utf-8")


def write_record(model_dir, record):
    """Writes ``<model_dir>/run.json`` atomically; returns its digest."""
    store = commit.as_storage(model_dir)
    data = encode(record)
    store.makedirs(store.root)
    store.write_atomic(store.path(RECORD_FILE), data)
    return digest_of(data)


def _parse(path, data):
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RunRecordError(
            f"{path} is not valid JSON (truncated or damaged, {len(data)} bytes); expected the run "
            "record bwtf-train writes. Restore it from a backup, or delete it and give the model "
            "flags explicitly") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise RunRecordError(f"{path} is not a bwtf run record (format {found!r}, expected {FORMAT!r})")
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise RunRecordError(
            f"{path} has format version {version!r}, newer than this bwtf reads ({FORMAT_VERSION}); "
            "use the bwtf release that trained the model, or a newer one")
    return record


def _newest_manifest(store):
    for status in reversed(commit.list_checkpoints(store)):
        if status.intact:
            name = status.directory.rstrip("/").rpartition("/")[2]
            return name, commit.read_manifest(store, store.path(name))
    return None, None


def read_record(model_dir):
    """The model_dir's RunRecord, or None when it has none (written before records).

    Raises RunRecordError for a damaged or newer-format file, and for one whose
    digest is not the one the newest intact checkpoint names.
    """
    store = commit.as_storage(model_dir)
    path = store.path(RECORD_FILE)
    if not store.exists(path):
        return None
    data = store.read_bytes(path)
    record = _parse(store.display(path), data)
    digest = digest_of(data)
    name, manifest = _newest_manifest(store)
    named = ((manifest or {}).get("extra") or {}).get(MANIFEST_KEY)
    if named and named != digest:
        raise RunRecordError(
            f"{store.display(path)} is not the record {name} was written with ({name}/MANIFEST.json "
            f"names {named}, the file is {digest}); it was probably copied from another model_dir. "
            "Restore this model_dir's run.json, or delete it and give the model flags explicitly")
    return RunRecord(store.display(path), record, digest)


def manifest_digest(directory):
    """The digest of a committed checkpoint's MANIFEST.json (what a warm start records)."""
    parent, _, name = str(directory).rstrip("/").rpartition("/")
    store = commit.as_storage(parent or "/")
    return digest_of(store.read_bytes(store.path(name, commit.MANIFEST)))


def summary_lines(record):
    """A few lines for people: model, classes, dataset, steps, source of a warm start."""
    model, dataset = record.get("model", {}), record.get("dataset", {})
    classes = record.get("classes", [])
    shown = ", ".join(c.get("name", "?") for c in classes[:5]) + (", ..." if len(classes) > 5 else "")
    lines = [
        f"run record {record.get('created_by', 'bwtf')} (TensorFlow {record.get('tensorflow', '?')})",
        f"model {model.get('name')} at {model.get('image_size')}px, {model.get('num_classes')} classes, "
        f"precision {model.get('precision')}",
        f"classes {shown}" if classes else "classes (not recorded)",
        f"dataset {dataset.get('name')} {dataset.get('version', '')} in {dataset.get('data_dir')} "
        f"(train {dataset.get('train_split')}, eval {dataset.get('eval_split')})",
        f"train_steps {record.get('flags', {}).get('train', {}).get('train_steps')}",
    ]
    source = record.get("warm_start")
    if source:
        lines.append(f"warm-started from {source.get('path')} (step {source.get('step')})")
    return lines
