"""The repository stands on its own: no file of it names the developers' notes that sit beside the
checkout in our own folder arrangement. A clone anywhere has only what git tracks, so code, tests,
docs, benchmarks, scripts and CI must not need (or point a reader at) anything outside it."""

import re

from conftest import REPO, repository_files

# Built from pieces so that this file does not name what it forbids.
NOTES = "sha" + "red"
FORBIDDEN = re.compile(
    rf"\.\./{NOTES}\b|(?<![\w.-]){NOTES}/(?:sp{'ec'}|sc{'enes'})\b", re.IGNORECASE
)


def offending_lines(text: str) -> list[str]:
    lines = text.splitlines()
    return [f"{n}: {line.strip()}" for n, line in enumerate(lines, 1) if FORBIDDEN.search(line)]


def test_the_pattern_catches_each_form_and_spares_ordinary_words():
    up, notes = "..", NOTES
    assert offending_lines(f"see {up}/{notes}/x.md") == [f"1: see {up}/{notes}/x.md"]
    assert offending_lines(f"spec: {notes}/spec/models.md 1.3")
    assert offending_lines(f"copied to `{notes}/scenes/arkit.pkl`")
    assert offending_lines(f"Spec: {up}/{notes.upper()}/SPEC/relevancy.md")
    assert not offending_lines(
        f"the {notes} scenes, a {notes}_points() helper, {notes}/ on a device"
    )


def test_no_file_names_the_notes_beside_the_checkout():
    files = repository_files()
    assert {"tests/test_standalone.py", "README.md", ".ci/run"} <= set(files)
    found = {}
    for name in files:
        data = (REPO / name).read_bytes()
        if b"\0" in data:
            continue  # binary (pickles, images)
        lines = offending_lines(data.decode("utf-8", errors="replace"))
        if lines:
            found[name] = lines
    assert not found, f"files that point outside the repository: {found}"


def test_without_git_the_walk_still_finds_every_tracked_file(monkeypatch):
    import conftest

    tracked = repository_files()

    def no_git(*args, **kwargs):
        raise OSError("git is not installed")

    monkeypatch.setattr(conftest.subprocess, "run", no_git)
    walked = repository_files()
    assert set(tracked) <= set(walked)
    assert not [name for name in walked if name.startswith((".venv/", ".git/"))]
