"""The documentation site repeats the README's quick start: the commands must stay the same."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bash_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


def test_site_home_shows_the_readme_commands() -> None:
    readme = bash_blocks(REPO / "README.md")
    home = bash_blocks(REPO / "docs" / "index.md")
    assert readme[:2] == home[:2]
    assert "make demo" in home[0]
    assert "make test" in home[0]
