"""Every reference to the documentation resolves: each `docs/<page>.md` and `docs/<page>.md#<anchor>`
named in a .py or .md file of the repository, and each relative markdown link of a .md file
(`(training.md#...)`, `(learning.md)`, `(#anchor)`, `(../docs/data.md#...)`), points at a page that
exists and, with an anchor, at a heading of that page. Anchors follow GitHub's rules: the heading's
text lower-cased, punctuation other than hyphens and underscores dropped, spaces turned into hyphens;
a repeated heading gets -1, -2, ... Headings inside fenced code blocks do not count."""

import re
from pathlib import Path

from conftest import REPO, repository_files

HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# `docs/<page>.md[#anchor]` wherever it is named (not as the tail of a longer path like ../docs/)
NAMED = re.compile(r"(?<![\w./-])docs/([\w.-]+\.md)(?:#([\w-]+))?")
# a markdown link's target: a relative page, optionally with an anchor, or an anchor alone
LINK = re.compile(r"\]\(\s*(?!\w+://|mailto:)([^()\s#]*?\.md)?(?:#([^()\s]+))?\s*\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()  # inline HTML
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, _, - and spaces
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor a page offers: its headings' slugs, duplicates numbered as GitHub does."""
    found, seen, fence = set(), {}, None
    for line in markdown.splitlines():
        opening = FENCE.match(line)
        if opening:
            marker = opening.group(1)
            if fence is None:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = None
            continue
        heading = HEADING.match(line)
        if fence is None and heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def references(path: Path, root: Path) -> list[tuple[Path, str | None, str]]:
    """(page, anchor or None, as written) of every docs reference in one file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    found = [(root / "docs" / page, anchor, m.group(0)) for m in NAMED.finditer(text)
             for page, anchor in [m.groups()]]  # fmt: skip
    if path.suffix == ".md":
        for m in LINK.finditer(text):
            page, anchor = m.groups()
            if page or anchor:
                target = (path.parent / page).resolve() if page else path
                found.append((target, anchor, m.group(0)))
    return found


def broken_references(root: Path, files: list[str]) -> list[str]:
    """'file: reference: problem' for every reference that does not resolve."""
    problems, cache = [], {}
    for name in files:
        if not name.endswith((".py", ".md")):
            continue
        for page, anchor, written in references(root / name, root):
            if not page.is_file():
                problems.append(f"{name}: {written}: no such page")
                continue
            if anchor is None:
                continue
            if page not in cache:
                cache[page] = anchors(page.read_text(encoding="utf-8"))
            if anchor not in cache[page]:
                problems.append(f"{name}: {written}: no heading with anchor #{anchor}")
    return problems


def test_slugs_follow_github():
    assert slug("The web page: app.py") == "the-web-page-apppy"
    assert (
        slug("Running under a job scheduler: `--resume`, SIGTERM, torchrun `--max-restarts`")
        == "running-under-a-job-scheduler---resume-sigterm-torchrun---max-restarts"
    )
    assert slug("OVSSC: SemAbs3D") == "ovssc-semabs3d"
    assert slug("The [mean-row](x.md) trap (VOOL's)") == "the-mean-row-trap-vools"
    page = "# A\n## Setup\n```bash\n# not a heading\n```\n## Setup\n~~~\n## no\n~~~\n### Setup\n"
    assert anchors(page) == {"a", "setup", "setup-1", "setup-2"}


def test_a_planted_broken_reference_is_found(tmp_path):
    d = "docs" + "/"  # so that this file holds no reference of its own
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## Real section\n\n[up](#real-section)\n")
    (tmp_path / "docs" / "other.md").write_text(
        "# Other\n[ok](page.md#real-section) [bad](page.md#gone) [missing](nowhere.md)\n"
    )
    (tmp_path / "module.py").write_text(
        f'"""See {d}page.md#real-section, {d}page.md, {d}page.md#gone-too, {d}none.md."""\n'
    )
    files = [f"{d}page.md", f"{d}other.md", "module.py"]
    assert broken_references(tmp_path, files) == [
        f"{d}other.md: ](page.md#gone): no heading with anchor #gone",
        f"{d}other.md: ](nowhere.md): no such page",
        f"module.py: {d}page.md#gone-too: no heading with anchor #gone-too",
        f"module.py: {d}none.md: no such page",
    ]


def test_every_docs_reference_in_code_and_docs_resolves():
    files = repository_files()
    checked = [name for name in files if name.endswith((".py", ".md"))]
    assert {"README.md", "docs/method.md", "net.py"} <= set(checked)
    assert broken_references(REPO, files) == []
