"""What the collector's and the controller's settings share: a YAML file that the
environment overrides, and refusals that name every bad key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource


class EnvOverYaml(BaseSettings):
    """Settings whose YAML file arrives as init keyword arguments, with the environment
    outranking it (pydantic-settings ranks init first by default)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, init_settings


def describe(exc: ValidationError) -> str:
    """Every refusal as `dotted.key: why`, unknown keys named as such."""
    out = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(settings)"
        out.append(f"{where}: unknown key" if err["type"] == "extra_forbidden" else f"{where}: {err['msg']}")
    return "; ".join(out)


def read_yaml_mapping(path: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """The top-level mapping of a YAML settings file (empty file: {}), or error naming the file."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise error(f"{what} {path} must be a mapping at the top level")
    return loaded
