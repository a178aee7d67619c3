"""Train the example 2-D FNO on a synthetic operator: python -m examples.train_fno --budget 0.5"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from examples.fno import FNO2d, FNOConfig, synthetic_batch
from examples.trainer import add_compile_args, compile_model, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_compile_args(parser)
    parser.add_argument("--size", type=int, default=32, help="grid points per side")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = compile_model(FNO2d(FNOConfig()), args.backend, args.budget)
    gen = torch.Generator().manual_seed(args.seed)
    batches = iter(lambda: synthetic_batch(args.batch, args.size, gen), None)
    train(model, lambda m, b: F.mse_loss(m(b[0]), b[1]), batches, args.steps, args.lr)


if __name__ == "__main__":
    main()
