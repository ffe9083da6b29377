"""Fixtures shared by component tests: the RouterOS simulator (`sim`, two profiles) and a
driver logged in to it (`driver`). A test module that defines its own `sim` or `driver`
(the modem tests do) uses its own."""

from tests.helpers.routeros import driver, sim

__all__ = ["driver", "sim"]
