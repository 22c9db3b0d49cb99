"""requirements.lock is what `make setup` installs: exact pins only, covering every range that
pyproject.toml declares, and installed as pinned (so the suite tests what a fresh machine gets)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, raw in enumerate((REPO / "requirements.lock").read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found = PIN.match(line)
        assert found, f"requirements.lock line {number} is not an exact pin: {line!r}"
        pins[canonicalize_name(found.group(1))] = Version(found.group(2))
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["dev"]]
    names += project["dependency-groups"]["setup"]
    return [Requirement(name) for name in names]


def test_every_declared_range_is_pinned_inside_it() -> None:
    """A range added or moved in pyproject.toml without `make lock` fails here, naming it."""
    pins = locked()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {requirement}: run `make lock`"
        )


def test_torch_is_the_cpu_build() -> None:
    assert str(locked()["torch"]).endswith("+cpu")


def test_the_environment_holds_the_locked_versions() -> None:
    """The suite runs on what the lock installs; a venv built another way fails here by name."""
    wrong = {}
    for name, version in locked().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong[name] = "missing"
            continue
        if installed != version:
            wrong[name] = f"{installed} installed"
    assert not wrong, f"not as requirements.lock pins them (run `make setup`): {wrong}"
