"""Every `python SCRIPT ...` command shown in the README names a script that exists, a command it
has, and only flags that the command accepts (checked against its own --help)."""

import os
import re
import shlex
import subprocess
import sys
from functools import cache

import pytest
from conftest import REPO

TYPER_SCRIPTS = {"generate_relevancy.py", "generate_scenes.py", "visualize.py"}


def readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S) + re.findall(r"`(python [^`]+)`", text)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            match = re.search(r"(?:^|\s|-- )(\w+\.py)(\s.*)?$", line)
            if match and ("python" in line or "torchrun" in line) and not line.startswith("pip"):
                commands.append([match.group(1), *shlex.split(match.group(2) or "")])
    return commands


@cache
def help_text(script: str, command: str | None) -> str:
    argv = [sys.executable, script, *([command] if command else []), "--help"]
    env = {**os.environ, "COLUMNS": "300", "TERM": "dumb", "NO_COLOR": "1"}
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, f"{' '.join(argv[1:])}: {result.stderr[-500:]}"
    return result.stdout


COMMANDS = readme_commands()


def test_the_readme_shows_the_scripts():
    scripts = {command[0] for command in COMMANDS}
    assert {"train_ovssc.py", "eval.py", "summarize.py", "visualize.py", "demo.py"} <= scripts


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command_uses_real_flags(command):
    script, *args = command
    if script.startswith("bench/") or not (REPO / script).is_file():
        assert (REPO / "bench" / script).is_file() or (REPO / script).is_file(), script
        return
    sub = args[0] if script in TYPER_SCRIPTS and args and not args[0].startswith("-") else None
    text = help_text(script, sub)
    for flag in (a.split("=")[0] for a in args if a.startswith("--")):
        assert flag in text, f"{script} {sub or ''}: README flag {flag} is not in --help"
