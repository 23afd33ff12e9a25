"""The server's settings (ServeConfig, what PolicyServer takes) and the schema of the `serve` section of
`vla-accel serve` (ServeSchema: those settings + the command's own, conf/serve.yaml).

Light on purpose (no websockets, no torch): registering the schema imports this module. Hydra checks
the types at compose; ServeConfig.__post_init__ checks what types cannot say, for the command and for
Python callers alike.
"""

import ipaddress
from dataclasses import dataclass, field, fields
from typing import List, Optional

import vla_accel.accel.preset_config  # noqa: F401  (stores the schema of the accel group, which serve composes)
from vla_accel.conf import store_schema

MIN_TOKEN_CHARS = 16  # a shared secret shorter than this is guessable
TOKEN_ENV = "VLA_ACCEL_AUTH_TOKEN"  # `vla-accel serve` reads serve.auth_token from it when the config has none


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: an ephemeral port (see PolicyServer.port)
    max_message_bytes: int = 4 * 2**20  # larger requests get an error reply
    transport_max_bytes: Optional[int] = None  # websockets' max_size (None: 4x max_message_bytes)
    max_instruction_chars: int = 512  # a cheap bound checked before tokenising
    max_instruction_tokens: int = 128  # the policy's tokenizer's count (also capped by the model's positions)
    ping_interval_s: Optional[float] = 20.0  # websockets keepalive (None: off)
    max_connections: int = 16  # websocket + REST connections open at once; more get HTTP 503
    send_timeout_s: float = 10.0  # a client that does not take its reply within this is disconnected
    max_queued_frames: int = 2  # frames read ahead per connection (websockets' max_queue)
    auth_token: Optional[str] = None  # shared secret ("Authorization: Bearer <token>"); required off loopback
    allowed_origins: tuple = ()  # browser Origins allowed to connect (none by default: web pages are refused)
    rest_port: Optional[int] = None  # OpenVLA-style `POST /act` (JSON) on this port (None: off, 0: any)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_origins", tuple(str(o) for o in self.allowed_origins))
        for name in ("port", "rest_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= int(value) < 65536:
                raise ValueError(f"serve.{name} must be in 0..65535, got {value}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"serve.max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.transport_max_bytes is not None and self.transport_max_bytes < self.max_message_bytes:
            raise ValueError("serve.transport_max_bytes must be >= serve.max_message_bytes")
        for name in ("max_instruction_chars", "max_instruction_tokens", "max_connections", "max_queued_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve.{name} must be >= 1, got {getattr(self, name)}")
        if not self.send_timeout_s > 0:
            raise ValueError(f"serve.send_timeout_s must be > 0, got {self.send_timeout_s}")
        self._check_auth()

    def _check_auth(self) -> None:
        if self.auth_token is not None and len(self.auth_token) < MIN_TOKEN_CHARS:
            raise ValueError(f"serve.auth_token must have at least {MIN_TOKEN_CHARS} characters")
        if not is_loopback(self.host) and not self.auth_token:
            raise ValueError(f"serve.host={self.host} accepts other machines: set serve.auth_token (a shared secret "
                             "the clients send, e.g. via the VLA_ACCEL_AUTH_TOKEN environment variable) or "
                             "serve on 127.0.0.1")

    @property
    def transport_limit(self) -> int:
        return self.transport_max_bytes or 4 * self.max_message_bytes


@dataclass
class ServeSchema:
    """Not a ServeConfig subclass: a frozen dataclass is a read-only Hydra node the YAML cannot fill."""

    host: str = ServeConfig.host
    port: int = ServeConfig.port
    max_message_bytes: int = ServeConfig.max_message_bytes
    transport_max_bytes: Optional[int] = ServeConfig.transport_max_bytes
    max_instruction_chars: int = ServeConfig.max_instruction_chars
    max_instruction_tokens: int = ServeConfig.max_instruction_tokens
    ping_interval_s: Optional[float] = ServeConfig.ping_interval_s
    max_connections: int = ServeConfig.max_connections
    send_timeout_s: float = ServeConfig.send_timeout_s
    max_queued_frames: int = ServeConfig.max_queued_frames
    auth_token: Optional[str] = None
    allowed_origins: List[str] = field(default_factory=list)
    rest_port: Optional[int] = None
    torch_threads: Optional[int] = None  # torch.set_num_threads for inference (None: torch's default)
    warmup: bool = True  # one inference on a blank frame before accepting clients

    def __post_init__(self) -> None:
        self.server_config()  # ServeConfig checks the ranges

    def server_config(self) -> ServeConfig:
        return ServeConfig(**{f.name: getattr(self, f.name) for f in fields(ServeConfig)})


store_schema("serve", ServeSchema)
