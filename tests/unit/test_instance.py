"""One agent per state directory: the lock, and how the command line reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.instance import AlreadyRunningError, agent_running, instance_lock


def test_a_second_agent_is_refused_and_the_lock_goes_with_the_first(tmp_path: Path) -> None:
    assert not agent_running(tmp_path)
    with instance_lock(tmp_path):
        assert agent_running(tmp_path)
        with (
            pytest.raises(AlreadyRunningError, match="another cpe-agent is running"),
            instance_lock(tmp_path),
        ):
            pass
        assert agent_running(tmp_path)  # asking did not take the lock away
    assert not agent_running(tmp_path)
