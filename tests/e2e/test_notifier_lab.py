"""The provider's side end to end in the lab: the agent's failover and recovery reach the
real mosquitto broker, the notifier (`cpe-agent fleet notify`) takes them by shared
subscription and a real SMTP server (aiosmtpd) receives exactly one e-mail for the
failover and one for the recovery."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.bench.voice_path import VoicePath, wait_until
from hil.demo import Mailroom
from hil.lab import Lab

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: builds network namespaces"),
]


@pytest.fixture
def lab() -> Iterator[Lab]:
    the_lab = Lab(prefix=f"cpt{os.getpid()}e-")
    try:
        the_lab.up(mqtt=True)
        yield the_lab
    finally:
        the_lab.down()


def test_one_email_on_failover_and_one_on_recovery(lab: Lab, tmp_path: Path):
    mail = Mailroom(lab, tmp_path)
    voice = VoicePath(lab, tmp_path / "voice")
    voice.start(stream=False)
    try:
        lab.impair("primary", "blackhole")
        wait_until(lambda: len(voice.agent.events("failover")) == 1, 20, "the failover")
        wait_until(lambda: len(mail.subjects()) >= 1, 30, "the failover e-mail")
        lab.impair("primary", "clear")
        wait_until(lambda: len(voice.agent.events("failback")) == 1, 60, "the failback")
        wait_until(lambda: len(mail.subjects()) >= 2, 30, "the recovery e-mail")
        subjects = mail.subjects()
        # The agent reconnects to the broker on each uplink change; still one mail each.
        wait_until(lambda: voice.agent.status() is not None, 5, "the agent's status")
        assert len(subjects) == 2, subjects
        assert subjects[0].startswith("[VoIP failover]")
        assert subjects[1].startswith("[VoIP restored]")
        assert "lab-site-1" in subjects[0] and "lab-site-1" in subjects[1]
    finally:
        voice.stop()
        lab.impair("primary", "clear")
