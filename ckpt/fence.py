"""Fencing: one writer per model_dir at a time, the newest one.

A chief takes ownership of model_dir before it reads or writes anything there
(``acquire``): it records generation ``g + 1`` (``g`` the newest recorded) in
``<model_dir>/.bwtf-owner-<generation>-<token>.json`` with its identity
(host, pid, pid start time). The owner is the record with the highest
(generation, token): two chiefs that start at once both write generation
``g + 1`` under different tokens, and the lower token loses at its first
check. Records are written without following links and never rewritten.

Every commit, pointer update and deletion by a writer is preceded by
``Ownership.check()``, which re-lists the records (object-store listings are
refreshed) and raises errors.FencedError if a newer owner exists. A fenced writer
commits and deletes nothing more; the training program logs one line and
exits with policy.EXIT_FENCED (73). There is a window between a check and the
rename that follows it (milliseconds, no lock exists across hosts on a
shared filesystem); the newer owner never deletes a checkpoint that
verifies, so a commit that slips through it is kept, not lost.

Readers (the evaluator, bwtf-eval, the CLI's list/verify/inspect) never take
ownership. ``bwtf-ckpt prune`` acts only when no live process owns model_dir.
"""
import json
import os
import re
import threading
import uuid

from absl import logging as log

from bwtf.ckpt import _identity
from bwtf.ckpt import errors
from bwtf.ckpt import storage as storage_lib

_RECORD_RE = re.compile(r"^\.bwtf-owner-(\d{1,18})-([0-9a-f]{12})\.json$")
# Records older than the newest few are removed by the owner.
_KEEP_RECORDS = 4


def _as_storage(model_dir):
    if isinstance(model_dir, storage_lib.Storage):
        return model_dir
    return storage_lib.Storage(model_dir)


def _records(store):
    """[(generation, token, name)] of the ownership records, oldest first."""
    found = []
    for name in store.listdir(store.root):
        match = _RECORD_RE.match(name)
        if match:
            found.append((int(match.group(1)), match.group(2), name))
    return sorted(found)


def current_owner(model_dir):
    """The newest ownership record as a dict (with 'generation'), or None."""
    store = _as_storage(model_dir)
    records = _records(store)
    if not records:
        return None
    generation, token, name = records[-1]
    try:
        record = json.loads(store.read_bytes(store.path(name), limit=2**16))
    except (OSError, ValueError, RecursionError, errors.CheckpointError):
        record = {}
    if not isinstance(record, dict):
        record = {}
    return {**record, "generation": generation, "token": token}


def owner_is_alive(model_dir):
    """True if a live process owns model_dir (see _identity.is_alive)."""
    owner = current_owner(model_dir)
    return owner is not None and owner.get("pid") is not None and _identity.is_alive(owner)


def describe(record):
    if not record:
        return "nobody"
    return (f"generation {record.get('generation')} ({record.get('host', '?')} "
            f"pid {record.get('pid', '?')})")


class Ownership:
    """This process's claim on one model_dir."""

    def __init__(self, store, generation, token):
        self.store = store
        self.generation = generation
        self.token = token

    def check(self, action="write"):
        """Raises FencedError if a newer owner has taken model_dir over."""
        records = _records(self.store)
        if records and records[-1][:2] != (self.generation, self.token):
            newer = current_owner(self.store)
            raise errors.FencedError(
                f"model_dir {self.store.display(self.store.root)} was taken over by "
                f"{describe(newer)}; this writer ({describe({**_identity.current(), 'generation': self.generation})}) "
                f"stops without a further {action}. Expected when a requeued job starts "
                "before its predecessor ended; otherwise two jobs share one --model_dir")

    def _remove_old_records(self):
        for generation, _, name in _records(self.store)[:-_KEEP_RECORDS]:
            if generation < self.generation:
                self.store.remove_tree(self.store.path(name))


_HELD = {}
_HELD_LOCK = threading.Lock()


def _key(store):
    return store.display(store.root)


def acquire(model_dir):
    """Takes ownership of model_dir for this process (once; later calls return
    the same Ownership). The previous owner is fenced from its next check."""
    store = _as_storage(model_dir)
    with _HELD_LOCK:
        held = _HELD.get(_key(store))
        if held is not None:
            return held
        store.makedirs(store.root)
        records = _records(store)
        previous = current_owner(store) if records else None
        generation = (records[-1][0] if records else 0) + 1
        token = uuid.uuid4().hex[:12]
        name = f".bwtf-owner-{generation}-{token}.json"
        data = json.dumps({**_identity.current(), "generation": generation}).encode()
        if store.is_local:
            fd = storage_lib.open_below(store.root, store.path(name),
                                        os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            storage_lib.fsync_path(store.root)
        else:
            store.write_atomic(store.path(name), data)
        ownership = Ownership(store, generation, token)
        ownership.check("start")
        if previous is not None and previous.get("pid") is not None and _identity.is_alive(previous):
            log.warning("Taking model_dir %s over from %s, which still runs: it will stop "
                        "at its next save.", store.display(store.root), describe(previous))
        ownership._remove_old_records()  # pylint: disable=protected-access
        _HELD[_key(store)] = ownership
        return ownership


def held(model_dir):
    """The Ownership this process holds for model_dir, or None."""
    store = _as_storage(model_dir)
    with _HELD_LOCK:
        return _HELD.get(_key(store))


def release_all():
    """Forgets every held ownership (tests that act as several writers)."""
    with _HELD_LOCK:
        _HELD.clear()
