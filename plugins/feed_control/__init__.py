"""Closed-loop control of a write target from a measured signal (the ``pi_control`` processor):
glucose held at its setpoint by the feed pump's speed, for one."""
