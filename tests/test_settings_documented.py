"""Every setting in `Settings` is explained in `.env.example` and in the README's docs."""

from __future__ import annotations

import re

import pytest

from smartgen.config import Settings
from tests.conftest import ROOT

VARIABLES = sorted(name.upper() for name in Settings.model_fields)


def test_settings_are_read_from_their_upper_case_names() -> None:
    """The check below looks for the upper-case names: no setting has another alias."""
    for name, field in Settings.model_fields.items():
        assert field.alias is None and field.validation_alias is None, name
    assert Settings.model_config.get("env_prefix", "") == ""


@pytest.mark.parametrize("variable", VARIABLES)
def test_setting_is_in_env_example(variable: str) -> None:
    example = (ROOT / ".env.example").read_text()
    assert re.search(rf"^#? ?{variable}=", example, re.MULTILINE), (
        f"{variable} is missing from .env.example (as `{variable}=…` or `# {variable}=…`)"
    )


@pytest.mark.parametrize("variable", VARIABLES)
def test_setting_is_in_the_readme(variable: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"`{variable}(=[^`]*)?`", readme), (
        f"{variable} is missing from the README (Configuration, or Security and limits)"
    )
