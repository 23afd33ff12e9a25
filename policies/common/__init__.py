"""Parts shared by the OpenVLA-style and CogACT-style policies: vision backbone, projector, Llama
backbone factory, tokenizers, image processing, prompt assembly and observation parsing."""
