"""CogACT-style policy: the VLM's cognition feature conditions a DiT diffusion action head."""
