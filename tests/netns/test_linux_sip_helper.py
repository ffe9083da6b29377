"""The Linux driver reads the kernel's SIP helper back from a real kernel: an nftables
`ct helper` of type "sip" in a throwaway table of the router's namespace turns
`sip_helper_on` True, deleting it turns it False, and the driver never removes it (it is
the customer's configuration, only reported).

The namespaces are tests/netns/test_linux_driver.py's (lan, cpe, far), under a prefix of
our own. The automatic-assignment path (/proc/sys/net/netfilter/nf_conntrack_helper) is
covered from tables in tests/unit/test_linux_sip_helper.py: Linux 6.0 removed that sysctl,
so a current kernel cannot show it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest

from drivers.router.linux.driver import LinuxRouterDriver
from tests.netns.test_linux_driver import POLICY, Net, build_net, run

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build network namespaces"),
]

#: The customer's table holding the helper (never the agent's `inet cpe_agent`).
HELPER_TABLE = "customer_sip_alg"
HELPER_SCRIPT = (
    f"table inet {HELPER_TABLE} {{\n"
    '  ct helper sip_5060 { type "sip" protocol udp; l3proto ip; }\n'
    "  chain pre { type filter hook prerouting priority filter; "
    'udp dport 5060 ct helper set "sip_5060"; }\n'
    "}\n"
)


def add_sip_helper(namespace: str) -> None:
    """Create the helper object (and the rule that assigns it) in `namespace`.

    The kernel loads nf_conntrack_sip by itself when nft asks for the helper (or has it
    built in); modprobe is tried once more where it exists. Skips, saying why, only when
    the kernel truly has no SIP helper; any other refusal fails the test."""
    made = _nft_script(namespace)
    if made.returncode != 0 and shutil.which("modprobe"):
        subprocess.run(["modprobe", "nf_conntrack_sip"], capture_output=True, check=False)
        made = _nft_script(namespace)
    if made.returncode == 0:
        return
    error = made.stderr.strip().splitlines()[0] if made.stderr.strip() else "no message"
    if not os.path.isdir("/sys/module/nf_conntrack_sip"):
        pytest.skip(
            f"kernel {os.uname().release} has no SIP conntrack helper: nf_conntrack_sip is "
            f"neither built in nor loadable here, so nft cannot create a ct helper of type "
            f"sip ({error})"
        )
    raise AssertionError(f"nft refused the SIP ct helper although the kernel has one: {error}")


def remove_sip_helper(namespace: str) -> None:
    run("ip", "netns", "exec", namespace, "nft", "delete", "table", "inet", HELPER_TABLE)


def _nft_script(namespace: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"],
                          input=HELPER_SCRIPT, capture_output=True, text=True, timeout=10,
                          check=False)


@pytest.fixture
def net() -> Iterator[Net]:
    prefix = f"cph-{secrets.token_hex(3)}-"
    try:
        yield build_net(prefix)
    finally:
        for name in ("lan", "cpe", "far"):
            run("ip", "netns", "del", f"{prefix}{name}", check=False)


@pytest.fixture
async def driver(net: Net) -> AsyncIterator[LinuxRouterDriver]:
    router = LinuxRouterDriver(netns=net.cpe, interfaces=("lan0", "wan0", "lte0"))
    await router.open()
    try:
        yield router
    finally:
        await router.close()


async def test_a_sip_ct_helper_reads_true_and_false_once_deleted(
    net: Net, driver: LinuxRouterDriver
) -> None:
    before = await driver.read_state()
    assert before.sip_helper_on is False  # a fresh namespace: no helper, no policy yet
    assert before.profile is None and before.profile_matched is None  # Linux has no profiles
    add_sip_helper(net.cpe)
    assert (await driver.read_state()).sip_helper_on is True
    remove_sip_helper(net.cpe)
    assert (await driver.read_state()).sip_helper_on is False


async def test_the_driver_reports_the_helper_and_leaves_it_alone(
    net: Net, driver: LinuxRouterDriver
) -> None:
    add_sip_helper(net.cpe)
    await driver.apply_policy(POLICY)
    state = await driver.read_state()
    assert state.sip_helper_on is True
    assert state.drift == ()  # the customer's helper is not the agent's drift
    await driver.apply_policy(POLICY)
    assert await driver.remove_all() > 0
    listed = net.ns(net.cpe, "nft", "list", "table", "inet", HELPER_TABLE)
    assert 'type "sip" protocol udp' in listed and 'ct helper set "sip_5060"' in listed
    assert (await driver.read_state()).sip_helper_on is True
