"""The fault harness in CI: scripts/crash_consistency.py, each scenario at least once.

``kills`` SIGKILLs a real writer at every failpoint of its first two saves
(the snapshot, each group, merge, fsync, manifest, rename, between the two
pointer writes); after each kill a new owner's start-up must leave TF's
checkpoint file naming the newest intact checkpoint, which restores into a
fresh graph with exactly the values saved at its step. The other scenarios
race real processes: two writers on one model_dir, ``bwtf-ckpt prune`` and a
rogue deleter during saves, a reader restoring while retention deletes. The
long runs are the same script with ``--trials``. The cluster scenarios (a slow
worker, a second SIGTERM, Ctrl-C, a chief failing at startup) run bwtf-launch;
the gs:// pair runs against gcp-storage-emulator.
"""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "crash_consistency.py")


def _run(*args, timeout):
    run = subprocess.run([sys.executable, SCRIPT, "--json", *args],
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_at_every_save_stage_leaves_a_restorable_checkpoint():
    summary = _run("--scenario=kills", "--trials=22", timeout=880)
    assert summary["trials"] == 22 and summary["failpoint"] == 22
    # Kills before the first commit leave nothing; later ones leave steps 1 and 2.
    assert set(summary["restored_steps"]) == {None, 1, 2}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_second_writer_fences_the_first():
    summary = _run("--scenario=two_writers", "--trials=1", timeout=580)
    assert summary["trials"] == 1 and summary["fenced_after_saves"][0] >= 3


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prune_and_a_rogue_deleter_never_kill_the_writer():
    summary = _run("--scenario=prune_loop", "--trials=1", timeout=580)
    assert summary["trials"] == 1 and summary["prunes_refused"][0] >= 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_reader_survives_retention_deleting_under_it():
    summary = _run("--scenario=reader_deletes", "--trials=1", timeout=580)
    assert summary["trials"] == 1 and summary["reader_restores"][0] >= 1


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario", ["slow_worker", "second_sigterm", "ctrl_c", "chief_fails_at_startup",
                                      "gcs_writer_reader"])
def test_cluster_and_gcs_scenarios(scenario):
    """The harness's bwtf-launch and gs:// scenarios, once each (the module
    docstring of scripts/crash_consistency.py lists what each asserts)."""
    summary = _run(f"--scenario={scenario}", "--trials=1", timeout=880)
    assert summary["trials"] == 1
