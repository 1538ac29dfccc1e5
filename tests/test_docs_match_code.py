"""The docs say what the code has: every setting in `Settings` is in the README (and in
`.env.example`: tests/test_config.py::test_every_setting_is_in_env_example), and every
test the README names as the check of a claim exists."""

from __future__ import annotations

import ast
import re

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


def test_every_test_the_readme_names_exists() -> None:
    cited = set(re.findall(r"`(tests/\w+\.py)::(\w+)`", README.read_text()))
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
    assert not missing, f"the README names tests that do not exist: {missing}"
