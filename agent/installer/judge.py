"""Pure judgements of the installer test, one name for the runner and the tests:
the pre-checks (`judge_precheck`) and the measurements (`judge_measure`). Each turns
what the runner read into a status, a line of figures and, when something is wrong,
one sentence of what to do; docs/installer.md explains every remedy.
"""

from agent.installer.judge_measure import (
    ECHO_REMEDY,
    RESTART_AGENT,
    Thresholds,
    budget_spent,
    capacity,
    failback,
    guard,
    nothing_over_lte,
    primary_again,
    sip_over_lte,
    switch,
    voice,
)
from agent.installer.judge_precheck import (
    calls,
    calls_unknown,
    coverage,
    failed_router,
    location,
    modem,
    no_modem,
    normal_state,
    router,
    rules,
    sip_helper,
)

__all__ = [
    "ECHO_REMEDY",
    "RESTART_AGENT",
    "Thresholds",
    "budget_spent",
    "calls",
    "calls_unknown",
    "capacity",
    "coverage",
    "failback",
    "failed_router",
    "guard",
    "location",
    "modem",
    "no_modem",
    "normal_state",
    "nothing_over_lte",
    "primary_again",
    "router",
    "rules",
    "sip_helper",
    "sip_over_lte",
    "switch",
    "voice",
]
