"""The docs say what the code has: every setting in `Settings` is in the README (and in
`.env.example`: tests/test_config.py::test_every_setting_is_in_env_example), and every
test the README or a page of `docs/` names as the check of a claim exists, and every
relative link between them leads to a file that exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from smartgen.config import Settings
from tests.conftest import ROOT

VARIABLES = sorted(name.upper() for name in Settings.model_fields)
README = ROOT / "README.md"


def test_settings_are_read_from_their_upper_case_names() -> None:
    """The checks look for the upper-case names: no setting has another alias."""
    for name, field in Settings.model_fields.items():
        assert field.alias is None and field.validation_alias is None, name
    assert Settings.model_config.get("env_prefix", "") == ""


@pytest.mark.parametrize("variable", VARIABLES)
def test_setting_is_in_the_readme(variable: str) -> None:
    assert re.search(rf"`{variable}(=[^`]*)?`", README.read_text()), (
        f"{variable} is missing from the README (Configuration, or Security and limits)"
    )


DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_every_test_the_readme_names_exists() -> None:
    cited = {
        found
        for page in DOCS
        for found in re.findall(r"`(tests/\w+\.py)::(\w+)`", page.read_text())
    }
    assert len(cited) >= 40  # the Reliability and Security tables
    missing = []
    for path, name in sorted(cited):
        tree = ast.parse((ROOT / path).read_text())
        functions = {
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        if name not in functions:
            missing.append(f"{path}::{name}")
    assert not missing, f"the docs name tests that do not exist: {missing}"


@pytest.mark.parametrize("page", DOCS, ids=lambda page: page.name)
def test_relative_links_lead_to_files(page: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # another site, or a heading of the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.name} links to files that do not exist: {broken}"
