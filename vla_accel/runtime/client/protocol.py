"""The messages of `vla-accel serve` (websocket, binary msgpack frames; see msgpack_numpy).

On connect the server sends its metadata: ``{"type": "metadata", "protocol": PROTOCOL_VERSION,
"server_version", "policy_type", "action_dim", "action_horizon", "image_size", "cameras",
"accel": {...flat accel config...} | None, "max_message_bytes", "max_instruction_chars",
"max_instruction_tokens"}``.

Requests (client -> server); ``seq`` is an optional integer echoed in the reply (lost or reordered
replies are detectable):
  ``{"type": "infer", "seq", "obs": {agentview_image (H,W,3) uint8, [wrist_image], [state (8,) float],
     instruction str}}``  -> ``{"type": "result", "seq", "actions": (H, A) float32,
     "policy_timing": {"total_ms", ...}, "server_timing": {"queue_ms", "infer_ms"}}``
  ``{"type": "select_action", "seq", "obs"}`` -> ``{"type": "result", "seq", "action": (A,) float32,
     "ran_model": bool, ...}`` (one action from this connection's own action queue, LeRobot's select_action)
  Results of an accelerated policy also hold ``"accel_stats": {"tokens", "tokens_kept", "pruned",
     "num_reused", "kept_visual": (M~,) int64 | None}`` for the call that ran the model.
  ``{"type": "reset", "seq"}`` -> ``{"type": "reset_done", "seq"}``  (new episode for this connection only)
  ``{"type": "set_keep_ratio", "seq", "keep_ratio": float}`` -> ``{"type": "ok", "seq", "keep_ratio"}``
     (this connection's pruning budget, applied between two inferences)
  ``{"type": "metadata", "seq"}`` -> the metadata again
Any bad request -> ``{"type": "error", "seq" (when readable), "error": "<what was wrong>"}``; the
connection stays open and the next good request is served.
"""

PROTOCOL_VERSION = 1
REQUEST_TYPES = ("infer", "select_action", "reset", "set_keep_ratio", "metadata")
OBS_KEYS = ("agentview_image", "wrist_image", "state", "instruction")
