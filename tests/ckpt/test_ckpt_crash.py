"""Crash consistency in CI: scripts/crash_consistency.py with 20 SIGKILL trials.

The script kills a real writer at every stage of a save (failpoints), at the
first and the second save, and after each kill restores the newest intact
checkpoint into a fresh graph and compares every value with what was saved
at that step; the long run (200 trials, with timed kills) is the same script.
"""
import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "crash_consistency.py")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_at_every_save_stage_leaves_a_restorable_checkpoint():
    run = subprocess.run([sys.executable, SCRIPT, "--trials=20", "--json"],
                         capture_output=True, text=True, timeout=580, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["trials"] == 20 and summary["failpoint"] == 20
    # Kills before the first commit leave nothing; later ones leave steps 1 and 2.
    assert set(summary["restored_steps"]) == {None, 1, 2}
