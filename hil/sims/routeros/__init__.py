"""A RouterOS API simulator that speaks the real wire protocol (see docs/sims-routeros.md)."""

from .control import control_call
from .db import Trap
from .pingtool import PingAnswer
from .profiles import MODELS, PROFILES
from .sim import RouterOSSim

__all__ = ["MODELS", "PROFILES", "PingAnswer", "RouterOSSim", "Trap", "control_call"]
