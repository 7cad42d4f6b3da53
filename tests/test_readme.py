"""Every command in the README's code blocks names a script that exists and options it accepts.

The commands are parsed as written (shell comments dropped, torchrun's own options skipped) and each
script is run with CONFIGURATOR_DRY_RUN=1, which parses its options and exits before doing any work.
All scripts run in one subprocess (runpy), so torch is imported once. The quick start's commands
themselves run in the suite with small overrides: the toy in test_toy.py, the tests by CI.
"""
import json
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNNER = r"""
import json, os, runpy, sys
results = []
for script, args in json.loads(sys.argv[1]):
    sys.argv = [script] + args
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    results.append([script, args, code if code in (0, None) else str(code)])
print("RESULTS " + json.dumps(results))
"""


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


def test_every_readme_command_parses():
    commands = readme_commands()
    missing = [s for s, _ in commands if not os.path.exists(os.path.join(ROOT, s))]
    assert not missing, f"the README names scripts that do not exist: {missing}"
    env = dict(os.environ, CONFIGURATOR_DRY_RUN="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(commands)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULTS ")]
    assert line, out.stdout[-2000:] + out.stderr[-2000:]
    failed = [(s, a, code) for s, a, code in json.loads(line[0][len("RESULTS "):]) if code not in (0, None)]
    assert not failed, failed
