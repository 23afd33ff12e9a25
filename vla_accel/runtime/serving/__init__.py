"""Serving a VLA policy to robot code: websocket + msgpack server (`vla-accel serve`).

The client lives in `vla_accel.runtime.client` (no torch). Import the server from
`vla_accel.runtime.serving.server` (this package root imports nothing heavy)."""
