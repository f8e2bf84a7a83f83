"""The README is a front page: its links lead somewhere, its commands name real files, and
no page quotes a number 'as at an earlier commit'."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def _links(page: Path) -> list[str]:
    return [m for m in re.findall(r"\]\(([^)#\s]+)", page.read_text()) if "://" not in m]


def test_every_relative_link_of_the_readme_and_docs_resolves():
    for page in PAGES:
        for link in _links(page):
            assert (page.parent / link).exists(), f"{page.relative_to(ROOT)} links to missing {link}"


def test_the_readme_commands_name_files_that_exist():
    text = (ROOT / "README.md").read_text()
    for path in re.findall(r"\b((?:params|notebooks)/[\w./-]+\.(?:yaml|py|ipynb))", text):
        assert (ROOT / path).exists(), path
    for name in re.findall(r"rst-workbook run (\w+)", text):
        assert (ROOT / "notebooks" / f"{name}.ipynb").exists(), name


def test_no_page_dates_its_numbers_by_commit():
    for page in PAGES:
        text = page.read_text().lower()
        for phrase in ("previous commit", "at this commit", "at the final commit", "the commit that adds it"):
            assert phrase not in text, f"{page.relative_to(ROOT)} says {phrase!r}"


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    assert text.index("## Two commands") < text.index("## The notebooks") < text.index("## Where the rest lives")
