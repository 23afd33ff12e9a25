"""Driving a robot: call styles, episodes and their forks, the fixed-rate control loop, the deadline
budget, the policy server (`serving/`) and its torch-free client (`client/`).

This package root imports nothing heavy, so `vla_accel.runtime.client` stays torch-free."""
