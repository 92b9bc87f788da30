"""Every `python ...`, `torchrun ...` and `make ...` command shown in README.md and docs/*.md names
a script (or make target) that exists, a command it has, and only flags that it accepts: the exact
flag names of its own --help, bracketed optional flags included. The quirk table in docs is exactly
`fixes.markdown_table()`, and every docs/ page the README links to exists."""

import contextlib
import importlib.util
import io
import os
import re
import runpy
import shlex
import sys
from functools import cache

import pytest
from conftest import REPO

import fixes

TYPER_SCRIPTS = {"generate_relevancy.py", "generate_scenes.py", "visualize.py"}
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LAUNCHERS = ("python", "python3", ".venv/bin/python", "torchrun", "make")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")


def shown_commands(text: str) -> list[str]:
    """The command lines of the ```bash blocks and of the inline code spans, one string each."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    commands = []
    for line in lines:
        for part in line.split("&&"):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:  # an unbalanced quote in prose, not a command
                continue
            if words and words[0] in LAUNCHERS:
                commands.append(words)
    return commands


def parse(words: list[str]) -> tuple[str, list[str], str, list[str]]:
    """(launcher, launcher options, script or make target, the script's arguments). Placeholders
    ("...") are dropped, and the brackets of optional flags ("[--port 7860]") are taken off."""
    words = [w.strip("[]") for w in words if w.strip("[]") not in ("", "...", "…")]
    if words[0] == "make":
        return "make", [], words[1] if len(words) > 1 else "", []
    for i, word in enumerate(words):
        if word.endswith(".py"):
            return words[0], words[1:i], word, words[i + 1 :]
    return words[0], words[1:], "", []


def all_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for words in shown_commands(path.read_text()):
            launcher, options, script, args = parse(words)
            module = options[1] if options[:1] == ["-m"] and len(options) > 1 else None
            if launcher != "make" and not script and module != "torch.distributed.run":
                continue  # python -m venv, python3 -m pip ...: not ours
            found.append((path.relative_to(REPO).as_posix(), words))
    return found


@cache
def help_text(script: str, command: str | None) -> str:
    """The script's own --help, run in this process (a subprocess per script would cost the suite a
    torch import each)."""
    argv = [script, *([command] if command else []), "--help"]
    out = io.StringIO()
    saved = sys.argv, os.environ.get("COLUMNS"), os.environ.get("TERM")
    sys.argv = argv
    os.environ.update(COLUMNS="300", TERM="dumb")
    code = 0
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(REPO / script), run_name="__main__")
    except SystemExit as exit:  # argparse exits after --help; typer, run by utils.run_app, returns
        code = exit.code
    finally:
        sys.argv = saved[0]
        for key, value in zip(("COLUMNS", "TERM"), saved[1:]):
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    assert code in (0, None), f"{' '.join(argv)} exited {code}"
    assert "--help" in out.getvalue(), f"{' '.join(argv)}: no help printed"
    return out.getvalue()


@cache
def torchrun_flags() -> set[str]:
    from torch.distributed.run import get_args_parser

    return set(FLAG.findall(get_args_parser().format_help()))


COMMANDS = all_commands()


def test_the_docs_show_every_script():
    scripts = {parse(words)[2] for _, words in COMMANDS}
    expected = {"train_ovssc.py", "train_vool.py", "calibrate.py", "eval.py", "summarize.py"}
    expected |= {"visualize.py"}
    expected |= {"demo.py", "app.py", "generate_scenes.py", "generate_relevancy.py"}
    expected |= {"bench/networks.py", "bench/relevancy.py", "bench/learn.py", "test"}
    assert expected <= scripts, expected - scripts


def test_the_flag_check_sees_bracketed_flags_and_exact_names():
    (words,) = shown_commands("`python app.py [--checkpoint x.pt] [--port 7860]`")
    assert parse(words) == ("python", [], "app.py", ["--checkpoint", "x.pt", "--port", "7860"])
    assert "--log" not in set(FLAG.findall("  --log_dir LOG_DIR  --no-log-x"))


@pytest.mark.parametrize(
    "where, words", COMMANDS, ids=[f"{w}: {' '.join(c)[:70]}" for w, c in COMMANDS]
)
def test_shown_command_uses_real_flags(where, words):
    launcher, options, script, args = parse(words)
    if launcher == "make":
        assert re.search(rf"^{re.escape(script)}:", (REPO / "Makefile").read_text(), re.M), script
        return
    if launcher == "torchrun" or options[:2] == ["-m", "torch.distributed.run"]:
        flags = {o.split("=")[0] for o in options if o.startswith("--") and o != "--"}
        assert flags <= torchrun_flags(), f"{where}: torchrun has no {flags - torchrun_flags()}"
    assert (REPO / script).is_file(), f"{where}: {script} does not exist"
    flags = [a.split("=")[0] for a in args if a.startswith("--") and a != "--"]
    if not flags and script not in TYPER_SCRIPTS:
        return
    sub = args[0] if script in TYPER_SCRIPTS and args and not args[0].startswith("-") else None
    accepted = set(FLAG.findall(help_text(script, sub)))
    for flag in flags:
        assert flag in accepted, f"{where}: {script} {sub or ''} has no flag {flag}"


@pytest.mark.parametrize("script", ["calibrate.py", "bench/learn.py"])
def test_the_help_describes_the_script_whole_and_every_flag(script):
    spec = importlib.util.spec_from_file_location(script.replace("/", "_")[:-3], REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = module.parser()
    first_paragraph = " ".join(module.__doc__.split("\n\n")[0].split())
    assert parser.description == first_paragraph and first_paragraph.endswith(".")
    assert [action.dest for action in parser._actions if not action.help] == []


def test_the_quirk_table_in_docs_is_fixes_markdown_table():
    lines = (REPO / "docs" / "differences.md").read_text().splitlines()
    start = lines.index(fixes.markdown_table().splitlines()[0])
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    assert "\n".join(lines[start:end]) == fixes.markdown_table()


def test_every_linked_page_and_picture_exists():
    for path in DOCS:
        for link in re.findall(r"\]\(([\w./-]+\.(?:md|png))(?:#[\w-]*)?\)", path.read_text()):
            assert (path.parent / link).is_file(), f"{path.name} links to missing {link}"


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 260
