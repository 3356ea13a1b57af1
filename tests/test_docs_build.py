"""The documentation site: `mkdocs build --strict` passes offline, and every page of docs/ is in the nav.

The build needs the docs requirements (mkdocs, mkdocs-material, mkdocstrings[python]; in the `test` and `docs`
extras). Without them the build test is skipped, unless ``PANOPTIC_REQUIRE_DOCS`` is set, which turns the skip
into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIG = ROOT / "mkdocs.yml"
NAV_SECTIONS = ("Home", "Tutorials", "Concepts", "Benchmarks", "API reference")


def _require_mkdocs() -> None:
    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None or importlib.util.find_spec(m) is None]
    if not missing:
        return
    msg = f"the docs requirements are not installed ({', '.join(missing)}); pip install -e '.[test]'"
    if os.environ.get("PANOPTIC_REQUIRE_DOCS"):
        pytest.fail(f"PANOPTIC_REQUIRE_DOCS is set but {msg}")
    pytest.skip(msg)


def _nav_text() -> str:
    text = CONFIG.read_text()
    assert "\nnav:\n" in text, "mkdocs.yml has no nav"
    return text.split("\nnav:\n", 1)[1]


def test_every_page_is_in_the_nav():
    nav = _nav_text()
    in_nav = set(re.findall(r":\s*([\w./-]+\.md)\s*$", nav, flags=re.M))
    # docs/results/*.md are tables written by `panoptic compare`, included into pages (pymdownx.snippets)
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if p.parent.name != "results"}
    assert pages - in_nav == set(), f"pages missing from the nav in mkdocs.yml: {sorted(pages - in_nav)}"
    assert in_nav - pages == set(), f"nav entries without a page: {sorted(in_nav - pages)}"
    for section in NAV_SECTIONS:
        assert re.search(rf"^  - {re.escape(section)}:", nav, flags=re.M), f"nav has no {section!r} section"


def test_config_builds_offline():
    text = CONFIG.read_text()
    # Google Fonts would be fetched at build time; only local plugins are allowed.
    assert re.search(r"^\s+font:\s*false\s*$", text, flags=re.M), "set theme.font: false (no Google Fonts fetch)"
    plugins = re.findall(r"^  - (\w[\w-]*)", text.split("\nplugins:\n", 1)[1].split("\nnav:\n", 1)[0], flags=re.M)
    assert set(plugins) <= {"search", "mkdocstrings"}, f"unexpected plugins {plugins}"
    assert "import:" not in text, "mkdocstrings inventories are fetched from the network; do not import any"


def test_mkdocs_build_strict(tmp_path):
    _require_mkdocs()
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(CONFIG),
                           "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    # The API reference is generated from the docstrings.
    api = {"core": "CategoryTable", "fusion": "UPSNetFusion", "data": "CocoPanopticDataset",
           "evaluation": "PanopticQuality", "models": "build_model", "engine": "TrainConfig",
           "visualize": "side_by_side", "compare": "run_compare"}
    for page, name in api.items():
        html = (site / "api" / page / "index.html").read_text()
        assert 'id="panoptic.' in html and name in html, f"api/{page}.md did not render {name}"
    for page in site.rglob("*.html"):
        assert "fonts.googleapis.com" not in page.read_text(), f"{page} loads Google Fonts"
