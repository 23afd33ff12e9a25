"""The robot-side client of `vla-accel serve`: numpy, msgpack and websockets only (never torch)."""

from vla_accel.runtime.client.msgpack_numpy import WireFormatError, packb, unpackb
from vla_accel.runtime.client.websocket_client import (EpisodeReset, RequestTimeout, ServerError,
                                                    WebsocketClientPolicy)

__all__ = ["EpisodeReset", "RequestTimeout", "ServerError", "WebsocketClientPolicy", "WireFormatError", "packb", "unpackb"]
