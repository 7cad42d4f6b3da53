"""Every command in the README's code blocks names a script that exists and options it accepts.

The commands are parsed as written (shell comments dropped, torchrun's own options skipped) and each
script runs in this process (test_cli.run) with CONFIGURATOR_DRY_RUN=1, which parses its options and
exits before doing any work. The quick start's commands themselves run in the suite with small
overrides: the toy in test_toy.py, the tests by CI.
"""
import os
import re
import shlex

from test_cli import ROOT, run


def readme_commands(path=os.path.join(ROOT, "README.md")):
    """[(script, args)] of every `python X.py ...` / `torchrun ... X.py ...` line in fenced code blocks."""
    text = open(path).read()
    commands = []
    for block in re.findall(r"```\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if not words or words[0] not in ("python", "torchrun"):
                continue
            scripts = [i for i, w in enumerate(words) if w.endswith(".py")]
            if not scripts:                      # python -m pytest, pip ...
                continue
            i = scripts[0]
            commands.append((words[i], words[i + 1:]))
    return commands


def test_readme_has_the_documented_commands():
    scripts = {s for s, _ in readme_commands()}
    assert {"toy/gaussian_mixture.py", "train.py", "eval.py", "sample.py", "figures.py"} <= scripts


def test_every_readme_command_parses(monkeypatch):
    commands = readme_commands()
    missing = [s for s, _ in commands if not os.path.exists(os.path.join(ROOT, s))]
    assert not missing, f"the README names scripts that do not exist: {missing}"
    monkeypatch.setenv("CONFIGURATOR_DRY_RUN", "1")
    failed = [(s, a, rc, err) for s, a in commands for rc, _, err in [run((s,), *a)] if rc != 0]
    assert not failed, failed
