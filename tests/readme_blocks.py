"""The README's command blocks, for the tests that run them (test_readme.py, launch/test_launch_readme.py).

``blocks()`` maps each ``## section`` title to its ```bash blocks, in README
order. ``small(text, replacements)`` applies textual replacements, each of
which must still match the README, so a test cannot drift from what the
README says without failing.
"""
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def blocks():
    """{section title: [bash block text, ...]} in README order."""
    found, section = {}, None
    for part in re.split(r"^(## .*)$", (REPO / "README.md").read_text(), flags=re.M):
        if part.startswith("## "):
            section = part[3:].strip()
            continue
        for block in re.findall(r"```bash\n(.*?)```", part, flags=re.S):
            found.setdefault(section, []).append(block)
    return found


def small(text, replacements):
    """``text`` with each (old, new) replaced; every ``old`` must occur in it."""
    for old, new in replacements:
        assert old in text, f"the README no longer says {old!r}; update the test that runs it"
        text = text.replace(old, new)
    return text
