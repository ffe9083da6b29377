"""What the driver checks about a router at open(): who it is, which profile fits, and
whether the agent's session has the rights it needs (and no more, ideally).

Each check is a few API prints through the caller's `call`; the judgement is in parse.py.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from drivers import profiles
from drivers.errors import DeviceReplyError, NeedsHumanError
from drivers.types import RouterIdentity

from . import parse
from .transport import ApiTrap

log = logging.getLogger(__name__)

Call = Callable[..., Awaitable[list[dict[str, str]]]]


async def identify(call: Call, profiles_dir: Path | None
                   ) -> tuple[RouterIdentity, profiles.RouterProfile]:
    """The router's identity (serial, model, name, version) and its firmware profile.

    UnsupportedError when no OS line covers its RouterOS version."""
    resource = (await call("/system/resource/print"))[0]
    board: Mapping[str, str] | None
    try:
        board = (await call("/system/routerboard/print"))[0]
    except (ApiTrap, IndexError):  # a CHR (x86, cloud) has no routerboard menu
        board = None
    name = (await call("/system/identity/print"))[0]
    version = parse.version_tuple(resource.get("version"))
    if version is None:
        raise DeviceReplyError("The router did not say its RouterOS version.",
                               raw=str(resource))
    boards: Sequence[str] = [resource.get("board-name", ""), (board or {}).get("model", ""),
                             (board or {}).get("board-name", "")]
    profile = profiles.match(profiles.load_router_profiles("routeros", profiles_dir),
                             "routeros", version, [b for b in boards if b])
    return parse.identity(resource, board, name), profile


async def privileges(call: Call, user: str) -> None:
    """NeedsHumanError naming exactly the policies the session's group lacks."""
    rows = await call("/user/print", queries=[f"?name={user}"], proplist=["name", "group"])
    group = rows[0].get("group") if rows else None
    if not group:
        raise NeedsHumanError(
            f"The router does not list the agent's user {user!r}; check router.username."
        )
    rows = await call("/user/group/print", queries=[f"?name={group}"],
                      proplist=["name", "policy"])
    enabled = parse.enabled_policies(rows[0].get("policy") if rows else "")
    missing = parse.missing_policies(enabled)
    needed = ",".join(parse.REQUIRED_POLICIES)
    if missing:
        plural = "policies" if len(missing) > 1 else "policy"
        raise NeedsHumanError(
            f"The RouterOS user {user!r} is in group {group!r}, which lacks the "
            f"{' and '.join(missing)} {plural}; on the router run '/user group add "
            f"name=cpe-agent policy={needed}' and '/user set {user} group=cpe-agent', "
            "then restart the agent."
        )
    spare = sorted(enabled - set(parse.REQUIRED_POLICIES))
    if spare:
        log.warning("router user %s (group %s) has more rights than the agent needs (%s); "
                    "least privilege is policy=%s", user, group, ",".join(spare), needed)


async def api_service(call: Call, profile: profiles.RouterProfile | None, host: str) -> None:
    """Warn when the API service accepts logins from anywhere (best effort: a router
    that will not show /ip service is not an error). 7.24 renamed the property."""
    prop = profile.quirk("api_service_address_property", "address") if profile else "address"
    try:
        rows = await call("/ip/service/print")
    except ApiTrap as trap:
        log.debug("cannot read /ip/service: %s", trap)
        return
    for row in rows:
        if row.get("name") not in ("api", "api-ssl") or parse.to_bool(row.get("dynamic")):
            continue  # 7.19+ lists connections as dynamic entries
        if parse.to_bool(row.get("disabled")) is True:
            continue
        if not row.get(prop):
            log.warning("router %s: the %s service accepts connections from any address; "
                        "restrict it to the agent (/ip service set %s %s=<agent>/32)",
                        host, row["name"], row["name"], prop)
