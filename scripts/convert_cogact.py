"""Convert a released CogACT checkpoint (config.json, dataset_statistics.json, checkpoints/CogACT-*.pt) once
to our safetensors layout, so that no pickle needs to be kept or loaded afterwards:

    python scripts/convert_cogact.py <release_dir> <out_dir> --tokenizer-path <local Llama-2-7b-hf dir>

The .pt is read with torch.load(weights_only=True) (no pickled code runs). The output loads with
`CogACTPolicy.from_pretrained(out_dir)` (or `policy=cogact_default policy.path=out_dir`) and gives the same
outputs as the release loaded directly. docs/cogact_checkpoint_layout.md says what is supported.
"""

from __future__ import annotations

import argparse
import sys

DTYPES = ("float32", "bfloat16", "float16")


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("release", help="the release directory (or its checkpoints/*.pt)")
    ap.add_argument("out_dir", help="where to write config.json, model.safetensors and the tokenizer")
    ap.add_argument("--tokenizer-path", required=True,
                    help="local copy of meta-llama/Llama-2-7b-hf holding tokenizer.json (not in the release)")
    ap.add_argument("--llm-config", default=None, help="its config.json or directory (default: --tokenizer-path)")
    ap.add_argument("--dit-heads", type=int, default=None,
                    help="DiT attention heads, only for a DiT of none of the released sizes (S/B/L)")
    ap.add_argument("--dtype", choices=DTYPES, default=None,
                    help="store the weights in this dtype (default: as released, float32)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    import torch

    from vla_accel.policies.cogact_release_layout import convert_release

    out = convert_release(args.release, args.out_dir, tokenizer_path=args.tokenizer_path,
                          llm_config=args.llm_config, dit_heads=args.dit_heads,
                          dtype=getattr(torch, args.dtype) if args.dtype else None)
    print(f"wrote {out} (load it with CogACTPolicy.from_pretrained({str(out)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
