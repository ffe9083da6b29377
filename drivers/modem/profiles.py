"""Per-model modem facts as data: firmware-profiles/modem/<vendor>/<model>.toml.

A profile names the USB ports, the commands that work, the reset and its ready signal,
and quirks, each quirk with its evidence. Drivers read a few settings from it (see
`setting`); everything else is for people. Missing profiles are fine: the vendor plugin's
defaults apply.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.errors import NeedsHumanError

#: The repository's profiles; CPE_AGENT_PROFILES_DIR points elsewhere (packaged installs).
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "firmware-profiles"


@dataclass(frozen=True)
class ModemProfile:
    vendor: str
    model: str
    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    def setting(self, key: str, default: Any = None) -> Any:
        """A driver setting from [settings] (e.g. "qeng_lte_sinr"), or `default`."""
        return self.data.get("settings", {}).get(key, default)


def profiles_dir() -> Path:
    env = os.environ.get("CPE_AGENT_PROFILES_DIR")
    return Path(env) if env else DEFAULT_DIR


def load(path: Path) -> ModemProfile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise NeedsHumanError(f"The modem profile {path} cannot be read ({exc}).") from exc
    vendor, model = data.get("vendor"), data.get("model")
    if not isinstance(vendor, str) or not isinstance(model, str):
        raise NeedsHumanError(f"The modem profile {path} lacks its vendor or model.")
    return ModemProfile(vendor=vendor, model=model, path=path, data=data)


def all_profiles(base: Path | None = None) -> list[ModemProfile]:
    root = (base or profiles_dir()) / "modem"
    if not root.is_dir():
        return []
    return [load(p) for p in sorted(root.glob("*/*.toml"))]


def find(vendor: str, model: str | None, base: Path | None = None) -> ModemProfile | None:
    """The profile whose `match.model_prefixes` starts the modem's +CGMM (case-insensitive)."""
    if not model:
        return None
    wanted = model.strip().upper()
    for profile in all_profiles(base):
        if profile.vendor != vendor:
            continue
        prefixes = profile.data.get("match", {}).get("model_prefixes", [profile.model])
        if any(wanted.startswith(str(p).upper()) for p in prefixes):
            return profile
    return None
