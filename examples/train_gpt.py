"""Train the example GPT on a synthetic next-token task:
python -m examples.train_gpt --budget 0.5"""

from __future__ import annotations

import argparse

import torch

from examples.gpt import GPT, GPTConfig, synthetic_batch
from examples.trainer import add_compile_args, compile_model, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_compile_args(parser)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cfg = GPTConfig(n_layer=args.layers, n_embd=args.width, n_head=4)
    model = compile_model(GPT(cfg), args.backend, args.budget)
    gen = torch.Generator().manual_seed(args.seed)
    batches = iter(lambda: synthetic_batch(cfg, args.batch, gen), None)
    train(model, lambda m, b: m(*b), batches, args.steps, args.lr)


if __name__ == "__main__":
    main()
