"""Descriptions of real benches; their tests run only when an operator names a rig."""
