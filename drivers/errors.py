"""The only exceptions a driver raises.

Each class names the outcome the agent should choose, so the agent maps errors to
outcomes once (retry later, ask a human, give up on a feature) without knowing which
device or library raised them.
"""

from __future__ import annotations


class DriverError(Exception):
    """Base of every driver error. `remedy` is one sentence of what a person can do."""

    remedy: str = "Check the device and the agent's configuration, then try again."

    def __init__(self, message: str, *, remedy: str | None = None) -> None:
        super().__init__(message)
        if remedy is not None:
            self.remedy = remedy


class RetryableError(DriverError):
    """Transient: timeout, connection dropped, device busy. Try again with back-off."""

    remedy = "The device did not answer in time; the agent retries by itself."


class NeedsHumanError(DriverError):
    """Will not fix itself: wrong credentials, missing permission, missing interface."""

    remedy = "Fix the device or the configuration as the message says, then restart the agent."


class UnsupportedError(DriverError):
    """The device or its firmware cannot do this; the feature is unavailable here."""

    remedy = "This device or firmware lacks the feature; see the hardware table in the README."


class DeviceReplyError(RetryableError):
    """The device answered with something we could not parse or an error reply.

    Carries the raw reply so nothing is lost for the bug report.
    """

    def __init__(self, message: str, *, raw: str = "", remedy: str | None = None) -> None:
        super().__init__(message, remedy=remedy)
        self.raw = raw
