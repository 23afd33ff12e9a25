"""OpenVLA-style policy: ViT(s) -> MLP projector -> Llama, 7 autoregressive action tokens."""
