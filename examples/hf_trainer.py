"""Train a tiny Hugging Face Llama with transformers.Trainer and torch_compile=True on random
tokens: python -m examples.hf_trainer --steps 10

Trainer only accepts known torch.compile backends, so fxopt is switched on by the environment
flag, with the script unchanged: FXOPT=1 FXOPT_BUDGET=0.5 python -m examples.hf_trainer
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from torch.utils.data import Dataset


class RandomTokens(Dataset):
    """`size` sequences of `length` uniformly random tokens, fixed by `seed`; labels = inputs
    (the model shifts them for next-token prediction)."""

    def __init__(self, size: int, length: int, vocab: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, vocab, (size, length), generator=gen)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def fxopt_enabled() -> bool:
    """Whether FXOPT turns fxopt on (the values fxopt accepts as true; a bad value fails the
    first compile with fxopt's own message, so it counts as on here)."""
    return os.environ.get("FXOPT", "").strip().lower() not in ("", "0", "false", "no", "off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments, set_seed

    set_seed(args.seed)
    config = LlamaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
                         max_position_embeddings=64, attention_dropout=0.0)
    model = LlamaForCausalLM(config)
    data = RandomTokens(size=64, length=32, vocab=config.vocab_size, seed=args.seed)

    with tempfile.TemporaryDirectory(prefix="fxopt-hf-trainer-") as out_dir:
        training_args = TrainingArguments(
            output_dir=out_dir, use_cpu=True, torch_compile=True, max_steps=args.steps,
            per_device_train_batch_size=args.batch, learning_rate=args.lr, seed=args.seed,
            logging_steps=1, save_strategy="no", report_to=[], dataloader_num_workers=0,
            disable_tqdm=True)
        trainer = Trainer(model=model, args=training_args, train_dataset=data)
        trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if fxopt_enabled():
        import fxopt

        reports = fxopt.reports()
        for report in reports:
            print(report.summary())
        fell_back = sum(1 for r in reports
                        if r.strategy != "fxopt plan" or r.fallback_reason is not None)
        print(f"fxopt: {len(reports)} graphs, {len(reports) - fell_back} planned, "
              f"{fell_back} fell back")
    print("losses: " + " ".join(f"{loss:.4f}" for loss in losses))


if __name__ == "__main__":
    main()
