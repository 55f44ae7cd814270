"""The README and docs/ link to each other, to their pictures and to sections by
anchor; a moved file or a renamed heading must not leave a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def heading_anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not '-' or
    '_'), spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#+ (.*)$", _prose(page.read_text()), flags=re.M):
        a = heading_anchor(m.group(1))
        n = seen.get(a, 0)
        seen[a] = n + 1
        out.add(a if n == 0 else f"{a}-{n}")  # repeated headings get -1, -2, ...
    return out


def _prose(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links or headings


def dead_links(page: Path) -> list[str]:
    dead = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path) if path else page
        if not dest.exists():
            dead.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            dead.append(f"{target}: no such heading")
    return dead


def test_heading_anchors_follow_githubs_rule():
    assert heading_anchor("CUT's D at 64 px, with the decay and the EMA") == "cuts-d-at-64-px-with-the-decay-and-the-ema"
    assert heading_anchor("A flip: `flip_centre=pixel`") == "a-flip-flip_centrepixel"


def test_every_relative_link_in_the_readme_and_docs_resolves(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n## Top\n\n[a](#top-1) [b](#nowhere) [c](missing.png) [d](https://x.org/y)\n")
    assert dead_links(page) == ["#nowhere: no such heading", "missing.png: no such file"]  # the check can fail
    assert len(PAGES) > 5
    dead = {p.relative_to(ROOT).as_posix(): d for p in PAGES if (d := dead_links(p))}
    assert not dead, dead


def raycut_commands(block: str) -> list[list[str]]:
    """Shell text as the argument lists of its `raycut` commands: continuation lines
    joined, comments and the other lines dropped."""
    import shlex

    joined = re.sub(r"\\\n", " ", block)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["raycut"]:
            commands.append(words[1:])
    return commands


def test_the_cheat_sheets_commands_resolve_as_written_beside_the_toy_data(tmp_path, monkeypatch, capsys):
    """Run from one directory as a user would: `raycut toy-data --out toy` makes the
    folder `toy`, and the train, tune and config lines after it (with --dry-run) must
    still find the built-in `--config toy` and train at the toy data's 64 px, not the
    full-size preset's 256 (the tune line without --config did, here and in `raycut
    tune --help`). The --help examples that train on the toy data are checked too."""
    from jobs.cli import EXAMPLES, main

    monkeypatch.chdir(tmp_path)
    block = re.search(r"## Cheat sheet\n+```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S).group(1)
    commands = raycut_commands(block)
    examples = [c for c in raycut_commands(EXAMPLES["train"] + "\n" + EXAMPLES["tune"]) if "toy" in " ".join(c)]
    commands += examples
    (make,) = [c for c in commands if c[0] == "toy-data"]
    assert main(make) == 0 and (tmp_path / "toy" / "trainA").is_dir()
    size = int(make[make.index("--size") + 1])
    checked = []
    for args in commands:
        if args[0] in ("train", "tune") or args[:2] == ["config", "show"]:
            capsys.readouterr()
            assert main(args + ["--dry-run"] if args[0] != "config" else args) == 0, args
            shown = capsys.readouterr().out
            crop = int(re.search(r"^\s*crop_size: (\d+)", shown, flags=re.M).group(1))
            assert crop == size, f"raycut {' '.join(args)}: crop_size {crop}, the toy data is {size} px"
            checked.append(args)
    assert {c[0] for c in checked} == {"train", "tune", "config"} and [e for e in examples if e in checked] == examples
    assert {c[0] for c in examples} == {"train", "tune"}, examples
