"""Train the example CNN (batch norm) on synthetic images: python -m examples.train_cnn"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from examples.cnn import CNNConfig, SmallCNN, synthetic_batch
from examples.trainer import add_compile_args, compile_model, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_compile_args(parser)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cfg = CNNConfig()
    model = compile_model(SmallCNN(cfg), args.backend, args.budget)
    gen = torch.Generator().manual_seed(args.seed)
    batches = iter(lambda: synthetic_batch(cfg, args.batch, gen), None)
    train(model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), batches, args.steps, args.lr)


if __name__ == "__main__":
    main()
