"""The eval area's shared constants and ways to run bwtf's commands.

Outside conftest.py so that tests import it by a name no other test folder
uses (`from conftest import ...` gets whichever conftest was imported first).
"""
import os
import subprocess
import sys

from absl import flags

TRAIN_STEPS = 60
CHECKPOINT_STEPS = (20, 40, 60)


def run_module(module, *args, timeout=240, cwd=None):
    """Runs ``python -m module args`` as a user would; returns the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def run_main(module, argv):
    """Runs ``module.main`` in this process with a private FlagValues; returns the exit code.

    0 when main returned normally; the test reads stdout/stderr with capsys.
    """
    flag_values = flags.FlagValues()
    cli_flags = module.define_flags(flag_values)
    flag_values(["prog", *argv])
    try:
        module.main(["prog"], cli_flags)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0
