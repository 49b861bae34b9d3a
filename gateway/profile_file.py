"""The profiles file: TOML, one table per profile (the format is described in the shipped
``gateway/profiles.toml``), read and checked once at start-up by :func:`load_profiles`.

Every mistake stops the gateway with a :class:`ProfileFileError` naming the file, the profile and the key: an
unknown key, a value of the wrong type, an out-of-range option or conflicting options (the same checks as a
submitted job's, :func:`gateway.option_validation.validate_options`), an unknown output format or bake mode,
a malformed name, no ``standard`` profile. Output formats and bake modes are written as the enum names in
lower case without their prefix (``"obj"``, ``"usdz"``, ``"preview"``; ``"fast"``, ``"optimize"``).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from gateway.errors import JobError
from gateway.option_validation import validate_options
from gateway.profiles import DEFAULT_PROFILE, Profile, Profiles
from synchuman.v1 import common_pb2

#: The profiles shipped with the gateway.
DEFAULT_FILE = Path(__file__).with_name("profiles.toml")
#: Environment variable naming another profiles file (``--profiles``).
ENV = "SYNCHUMAN_GATEWAY_PROFILES"
NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
_GROUPS = tuple(field.name for field in common_pb2.JobOptions.DESCRIPTOR.fields if field.message_type)
_ENUMS = {
    ("reconstruction", "outputs"): ("OUTPUT_FORMAT_", common_pb2.OutputFormat),
    ("reconstruction", "bake_mode"): ("BAKE_MODE_", common_pb2.BakeMode),
}


class ProfileFileError(ValueError):
    """The profiles file cannot be used; the message names the file, the profile and the key."""


def _enum_value(group: str, key: str, value: Any, where: str) -> Any:
    """An output format or bake mode name (``"obj"``) as its proto enum name (``"OUTPUT_FORMAT_OBJ"``)."""
    prefix, enum = _ENUMS[(group, key)]
    known = [name.removeprefix(prefix).lower() for name in enum.keys() if not name.endswith("UNSPECIFIED")]
    values = value if isinstance(value, list) else [value]
    for item in values:
        if not isinstance(item, str) or item.lower() not in known:
            raise ProfileFileError(f"{where}: unknown {key} {item!r}; use one of {', '.join(known)}")
    named = [prefix + item.upper() for item in values]
    return named if isinstance(value, list) else named[0]


def _options(table: dict[str, Any], where: str) -> common_pb2.JobOptions:
    """The ``JobOptions`` of one profile's table (its option groups)."""
    wire: dict[str, Any] = {}
    for group in (g for g in _GROUPS if g in table):
        values = table[group]
        if not isinstance(values, dict):
            raise ProfileFileError(f"{where}.{group}: expected a table of options, got {values!r}")
        known = [field.name for field in getattr(common_pb2.JobOptions(), group).DESCRIPTOR.fields]
        wire[group] = {}
        for key, value in values.items():
            if key not in known:
                raise ProfileFileError(f"{where}.{group}: unknown key {key!r}; known: {', '.join(known)}")
            enum = (group, key) in _ENUMS
            wire[group][key] = _enum_value(group, key, value, f"{where}.{group}.{key}") if enum else value
    options = common_pb2.JobOptions()
    try:
        json_format.ParseDict(wire, options)
    except json_format.ParseError as exc:
        raise ProfileFileError(f"{where}: {exc}") from None
    try:
        validate_options(options)
    except JobError as exc:
        raise ProfileFileError(f"{where}: {exc.message}") from None
    return options


def _profile(name: str, table: Any, source: str) -> Profile:
    where = f"{source}: profile {name!r}"
    if not NAME.fullmatch(name):
        raise ProfileFileError(f"{where}: names are [a-z][a-z0-9-]*, at most 32 characters")
    if not isinstance(table, dict):
        raise ProfileFileError(f"{where}: expected a table, got {table!r}")
    unknown = sorted(set(table) - {"description", *_GROUPS})
    if unknown:
        raise ProfileFileError(
            f"{where}: unknown key {unknown[0]!r}; known: description, {', '.join(_GROUPS)}"
        )
    description = table.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ProfileFileError(f"{where}: 'description' (what the profile is for) is required")
    return Profile(name, " ".join(description.split()), _options(table, where))


def parse_profiles(text: str, source: str = "<profiles>") -> Profiles:
    """The profiles of a TOML document; :class:`ProfileFileError` for any mistake."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileFileError(f"{source}: not valid TOML: {exc}") from None
    profiles = [_profile(name, table, source) for name, table in document.items()]
    if DEFAULT_PROFILE not in document:
        raise ProfileFileError(
            f"{source}: no {DEFAULT_PROFILE!r} profile (the profile of jobs that name none)"
        )
    return Profiles(profiles, source)


def load_profiles(path: Path | str | None = None) -> Profiles:
    """The profiles of ``path`` (None: ``$SYNCHUMAN_GATEWAY_PROFILES``, else :data:`DEFAULT_FILE`);
    :class:`ProfileFileError` when it cannot be read or is wrong."""
    chosen = Path(path or os.environ.get(ENV) or DEFAULT_FILE)
    try:
        text = chosen.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileFileError(f"{chosen}: cannot read the profiles file: {exc.strerror or exc}") from None
    return parse_profiles(text, str(chosen))
