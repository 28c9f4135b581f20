"""Every console script the package declares points at a function that exists."""

import importlib
import tomllib


def test_console_scripts_resolve():
    with open("pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert "paploss-search" in scripts
    for name, target in scripts.items():
        module_name, _, attribute = target.partition(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attribute, None)), f"{name} -> {target} is not callable"
