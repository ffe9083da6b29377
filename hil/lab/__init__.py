"""The virtual lab: Linux network namespaces standing in for a customer site, its two
uplinks, the internet and the provider's data centres. See docs/lab.md.

    from hil.lab import Lab
    with Lab(prefix="cpt1-") as lab:
        lab.impair("primary", "blackhole")
"""

from hil.lab.lab import Lab, LabError, wait_until

__all__ = ["Lab", "LabError", "wait_until"]
