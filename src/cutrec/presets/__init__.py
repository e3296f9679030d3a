"""Named recipes: config files shipped in the package (`cutrec presets` lists them; `cutrec train --preset NAME`
starts from one, before a --config file and the --key=value options).

Each preset is a TOML file of config sections beside this module, its first line a comment that describes it. A
preset spells out every key of the recipe it names, so that changing cutrec's defaults never changes a preset.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from cutrec.errors import CutrecError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def names() -> list[str]:
    """The presets' names, sorted."""
    return sorted(entry.name.removesuffix(".toml") for entry in resources.files(__package__).iterdir()
                  if entry.name.endswith(".toml"))


def load(name: str) -> dict[str, Any]:
    """The config sections of preset `name`."""
    if name not in names():
        raise CutrecError(f"preset {name!r} is unknown; choose one of {', '.join(names())} (cutrec presets)")
    return tomllib.loads(resources.files(__package__).joinpath(f"{name}.toml").read_text())


def describe() -> str:
    """One line per preset: its name and the description on its first line."""
    rows = []
    for name in names():
        first = resources.files(__package__).joinpath(f"{name}.toml").read_text().splitlines()[0]
        rows.append(f"{name:<16} {first.removeprefix('#').strip()}")
    return "\n".join(rows)
