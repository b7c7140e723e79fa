"""``python -m bwtf.ckpt``: the same as ``bwtf-ckpt`` (see cli.py)."""
from bwtf.ckpt import cli

if __name__ == "__main__":
    cli.run()
