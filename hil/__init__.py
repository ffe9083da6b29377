"""Hardware in the loop: the virtual lab, protocol simulators, benchmarks and rigs.

Not part of the installed distribution: run from a source checkout
(`python -m hil.lab ...` from the repository root).
"""
