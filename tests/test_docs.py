"""The README and the pages under docs/ link to each other and to files in the repository: every relative link
must reach a file, every `#anchor` a heading of the page it names (GitHub's slugs), and every page must be
reachable from the README. A section renamed or a page moved breaks a link without anything else noticing."""

import re
import unicodedata
from pathlib import Path

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose_lines(page: Path) -> list[str]:
    """The page's lines outside fenced code blocks (where `#` starts a comment and brackets are code)."""
    lines, fence = [], None
    for line in page.read_text(encoding="utf-8").splitlines():
        marker = re.match(r"\s*(```|~~~)", line)
        if marker:
            fence = None if fence == marker.group(1) else fence or marker.group(1)
            continue
        if fence is None:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text as rendered, lower-cased, with everything but letters, marks,
    digits, underscores, hyphens and spaces dropped, and each space made a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    kept = (c for c in text if c in " -" or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc")
    return "".join(kept).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on the page; a repeated heading gets -1, -2, ... as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(page):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The targets of the page's links and images, outside code (inline code spans dropped first)."""
    return [target for line in prose_lines(page) for target in LINK.findall(re.sub(r"`[^`]*`", "", line))]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{target} (no heading with that anchor in {linked.name})")
    return broken


def test_every_relative_link_and_anchor_in_the_readme_and_docs_resolves():
    broken = [f"{page.relative_to(REPO)}: {link}" for page in PAGES for link in broken_links(page)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / target.partition("#")[0]).resolve() for target in links(REPO / "README.md")}
    orphans = [page.relative_to(REPO).as_posix() for page in PAGES[1:] if page.resolve() not in linked]
    assert not orphans, f"README.md links none of: {', '.join(orphans)} (add it to 'Where to go next')"


def test_github_slugs():
    assert slug("The `smol` recipe: the book's chapters 5.5-7 at the book's scale, offline") == (
        "the-smol-recipe-the-books-chapters-55-7-at-the-books-scale-offline"
    )
    assert slug("Throughput (`make bench`)") == "throughput-make-bench"
    assert slug("`adapt@<method>` and first_number") == "adaptmethod-and-first_number"


def test_a_broken_anchor_and_a_missing_file_are_reported(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A heading\n\n```bash\n# not a heading\n```\n\n[ok](#a-heading) [bad](#not-a-heading) [gone](nope.md)\n")
    assert broken_links(page) == ["#not-a-heading (no heading with that anchor in page.md)", "nope.md (no such file)"]
