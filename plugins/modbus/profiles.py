"""Named, reusable register maps shipped as YAML files beside this module."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import load_yaml

from .identity import IdentitySpec
from .registers import CommandSpec, RegisterSpec

__all__ = ["Profile", "available_profiles", "load_profile"]

_DIR = Path(__file__).resolve().parent / "profiles"


class Profile(BaseModel):
    """A register map with its addressing conventions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    address_base: Literal[0, 1] = 0
    word_order: Literal["big", "little"] = "big"
    byte_order: Literal["big", "little"] = "big"
    registers: tuple[RegisterSpec, ...] = Field(default=())
    identity: IdentitySpec = Field(
        default=None, description="How the device tells its identity (see the options' field)."
    )
    commands: tuple[CommandSpec, ...] = Field(
        default=(), description="Device commands: a fixed value written to a register."
    )


def available_profiles() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(p.stem for p in _DIR.glob("*.yaml"))


@functools.cache
def load_profile(name: str) -> Profile:
    """The shipped profile ``name``; ``ValueError`` naming the known ones if there is none."""
    path = _DIR / f"{name}.yaml"
    if not name.replace("_", "").isalnum() or not path.is_file():
        raise ValueError(f"unknown profile {name!r} (known: {', '.join(available_profiles())})")
    try:
        return Profile.model_validate(load_yaml(path.read_text(encoding="utf-8")))
    except (ValidationError, yaml.YAMLError) as exc:
        # A shipped profile that does not validate is our bug; say which file.
        raise ValueError(f"profile {name!r} ({path}) is invalid: {exc}") from exc
