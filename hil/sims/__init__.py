"""Faithful simulators: each speaks the real wire protocol of the hardware it stands for."""
