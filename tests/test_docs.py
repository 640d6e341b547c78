"""Every ```python block in README.md and docs/*.md runs, so the docs cannot drift from the code.

Each page runs in a fresh Python process (its blocks in order, sharing one namespace, in a
temporary folder), so a page that selects the simulator cannot affect the rest of the suite.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page):
    return BLOCK.findall(page.read_text())


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_page_code_runs(page, tmp_path):
    script = "\n\n".join(python_blocks(page))
    (tmp_path / "page.py").write_text(script)
    run = subprocess.run([sys.executable, "page.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"{page.name}:\n{run.stdout}\n{run.stderr}"


def test_every_page_is_linked_from_the_index():
    index = (ROOT / "docs" / "index.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "index.md":
            assert f"({page.name})" in index, f"docs/index.md does not link {page.name}"


def test_pictures_the_docs_show_are_committed():
    for page in PAGES:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} shows {target}, which is missing"
