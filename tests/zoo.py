"""A zoo of tiny third-party models (Hugging Face transformers, neuraloperator) and training
patterns for fxopt's tests and benchmarks.

Every case builds from a config in code (no weights are downloaded), seeded, fp32, small
enough that one eager forward + backward takes well under a second on a CPU.

Conventions
-----------
``case.build(batch=2)`` returns ``(model, inputs, targets)``:

* ``model``   -- a fresh ``nn.Module`` in train mode (same weights on every call),
* ``inputs``  -- ``dict[str, Tensor]`` passed to the model as keyword arguments,
* ``targets`` -- ``dict[str, Tensor]`` only the loss reads (empty when the loss is computed
  inside the model, as for the Hugging Face cases that take ``labels``).

``case.loss(output, targets)`` turns the model's output into a scalar loss.
``forward_loss(case, model, inputs, targets)`` runs forward + loss under the case's autocast
(if any); ``eager_step`` and ``compiled_step`` run one whole step and return the loss and every
parameter gradient::

    from tests.zoo import ZOO, build, eager_step, compiled_step

    loss_e, grads_e = eager_step(ZOO["hf_gpt2"])
    loss_c, grads_c = compiled_step(ZOO["hf_gpt2"], backend="inductor")

Global state: building "fno" / "fno_opt_einsum" switches tensorly's process-wide einsum
(torch.einsum vs opt_einsum, see ``_use_tensorly_einsum``); build a case right before running it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

Inputs = dict[str, torch.Tensor]
Built = tuple[nn.Module, Inputs, Inputs]

SEED = 0
VOCAB = 128
SEQ = 16


@dataclasses.dataclass(frozen=True)
class ZooCase:
    """One model of the zoo.

    build:         ``build(batch=2) -> (model, inputs, targets)``; seeds itself.
    loss:          ``loss(output, targets) -> scalar tensor``.
    graph_breaks:  Dynamo splits the forward into several graphs (deliberately, or as the
                   third-party code does by itself); False means one graph, no break.
    dynamic_batch: compile with ``torch._dynamo.mark_dynamic(t, 0)`` on every tensor input.
    autocast:      run forward + loss under ``torch.autocast(device, dtype=autocast)``.
    deterministic: gradients are comparable with eager (False when dropout is active: the
                   compiled RNG stream differs from eager's).
    rtol, atol:    tolerance for comparing the compiled step with eager.
    tags:          free-form labels ("hf", "encoder-decoder", "checkpointing", ...).
    """

    name: str
    build: Callable[..., Built]
    loss: Callable[[Any, Inputs], torch.Tensor]
    graph_breaks: bool = False
    dynamic_batch: bool = False
    autocast: torch.dtype | None = None
    deterministic: bool = True
    rtol: float = 1e-4
    atol: float = 1e-5
    tags: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# losses

def hf_loss(output: Any, _targets: Inputs) -> torch.Tensor:
    """The loss a Hugging Face model computed itself from the ``labels`` it was given."""
    return output.loss


def mse_loss(output: Any, targets: Inputs) -> torch.Tensor:
    return F.mse_loss(output, targets["target"])


# --------------------------------------------------------------------------------------------
# helpers

def _tokens(batch: int, seq: int = SEQ, low: int = 3) -> torch.Tensor:
    # ids 0..2 are reserved for pad / bos / eos in every config below
    return torch.randint(low, VOCAB, (batch, seq))


def _image_classifier(model: nn.Module, batch: int) -> Built:
    """A Hugging Face image classifier with 32x32 RGB images and 10 labels, loss inside."""
    pixels = torch.randn(batch, 3, 32, 32)
    labels = torch.randint(0, 10, (batch,))
    return _train(model), {"pixel_values": pixels, "labels": labels}, {}


def _train(model: nn.Module) -> nn.Module:
    model.train()
    return model


_SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


# --------------------------------------------------------------------------------------------
# Hugging Face decoders

def _gpt2(batch: int = 2, dropout: float = 0.0) -> Built:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(SEED)
    config = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        summary_first_dropout=dropout, use_cache=False,
                        attn_implementation="sdpa", **_SPECIAL)
    model = GPT2LMHeadModel(config)
    # transformers infers loss_type from the class name, and "GPT2LMHeadModel" matches none:
    # loss_type stays None and `loss_function` calls `logger.warning_once` on every forward,
    # which Dynamo cannot trace (a graph break in the middle of the loss). Name it.
    model.loss_type = "ForCausalLM"
    ids = _tokens(batch)
    return _train(model), {"input_ids": ids, "labels": ids}, {}


def _gpt2_dropout(batch: int = 2) -> Built:
    return _gpt2(batch, dropout=0.1)


def _llama(batch: int = 2, checkpointing: bool = False) -> Built:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, attention_dropout=0.0, use_cache=False,
                         attn_implementation="sdpa", **_SPECIAL)
    model = LlamaForCausalLM(config)
    if checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):     # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:                                                      # deprecated alias in 5.x
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    ids = _tokens(batch)
    return _train(model), {"input_ids": ids, "labels": ids}, {}


def _llama_checkpointing(batch: int = 2) -> Built:
    return _llama(batch, checkpointing=True)


def _qwen2(batch: int = 2) -> Built:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(SEED)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, attention_dropout=0.0, use_cache=False,
                         use_sliding_window=False, tie_word_embeddings=False,
                         attn_implementation="sdpa", **_SPECIAL)
    model = Qwen2ForCausalLM(config)
    ids = _tokens(batch)
    return _train(model), {"input_ids": ids, "labels": ids}, {}


# --------------------------------------------------------------------------------------------
# Hugging Face encoders / encoder-decoders / vision / audio

def _bert(batch: int = 2) -> Built:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(SEED)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        classifier_dropout=0.0, attn_implementation="sdpa", **_SPECIAL)
    model = BertForMaskedLM(config)
    ids = _tokens(batch)
    mask = torch.ones(batch, SEQ, dtype=torch.long)
    mask[0, SEQ - 4:] = 0                                  # right padding on the first row
    ids = ids.masked_fill(mask == 0, config.pad_token_id)
    labels = torch.full_like(ids, -100)
    masked = (torch.rand(batch, SEQ) < 0.3) & (mask == 1)
    masked[:, 1] = True                                    # at least one label per row
    labels[masked] = ids[masked]
    ids = ids.masked_fill(masked, 3)                       # token 3 plays [MASK]
    return _train(model), {"input_ids": ids, "attention_mask": mask, "labels": labels}, {}


def _t5(batch: int = 2) -> Built:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(SEED)
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                      num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
                      relative_attention_max_distance=32, dropout_rate=0.0, use_cache=False,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      attn_implementation="sdpa")
    model = T5ForConditionalGeneration(config)
    ids = _tokens(batch)
    labels = _tokens(batch, SEQ // 2)
    return _train(model), {"input_ids": ids, "labels": labels}, {}


def _vit(batch: int = 2) -> Built:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(SEED)
    config = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32,
                       num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=10,
                       attn_implementation="sdpa")
    return _image_classifier(ViTForImageClassification(config), batch)


def _whisper(batch: int = 2) -> Built:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(SEED)
    frames = 32                                            # encoder sees frames // 2 positions
    config = WhisperConfig(vocab_size=VOCAB, num_mel_bins=16, d_model=32, encoder_layers=2,
                           decoder_layers=2, encoder_attention_heads=4,
                           decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                           max_source_positions=frames // 2, max_target_positions=32,
                           dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                           encoder_layerdrop=0.0, decoder_layerdrop=0.0, use_cache=False,
                           decoder_start_token_id=1, suppress_tokens=None,
                           begin_suppress_tokens=None, attn_implementation="sdpa", **_SPECIAL)
    model = WhisperForConditionalGeneration(config)
    features = torch.randn(batch, 16, frames)
    labels = _tokens(batch, 8)
    return _train(model), {"input_features": features, "labels": labels}, {}


def _resnet(batch: int = 2) -> Built:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(SEED)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          layer_type="basic", num_labels=10)
    return _image_classifier(ResNetForImageClassification(config), batch)


# --------------------------------------------------------------------------------------------
# diffusers

def _unet(batch: int = 2) -> Built:
    from diffusers import UNet2DModel

    torch.manual_seed(SEED)
    model = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                        block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=8,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    noisy = torch.randn(batch, 3, 16, 16)
    timestep = torch.randint(0, 1000, (batch,))
    noise = torch.randn(batch, 3, 16, 16)
    return _train(model), {"sample": noisy, "timestep": timestep}, {"target": noise}


def unet_loss(output: Any, targets: Inputs) -> torch.Tensor:
    """The denoising loss: the predicted noise against the true noise."""
    return F.mse_loss(output.sample, targets["target"])


# --------------------------------------------------------------------------------------------
# neuraloperator

def _use_tensorly_einsum(opt_einsum: bool) -> None:
    """neuralop contracts its spectral weights with ``tensorly.einsum``, which neuralop points at
    opt_einsum when imported (``use_opt_einsum("optimal")``, a process-wide setting read at
    call time). Dynamo cannot trace opt_einsum's path search (list.pop on a list it tracks,
    importlib in its dispatch): every spectral contraction breaks the graph. torch.einsum
    computes the same contraction and traces into one graph."""
    from tensorly import plugins

    if opt_einsum:
        plugins.use_opt_einsum("optimal")
    else:
        plugins.use_default_einsum()


def _fno(batch: int = 2, opt_einsum: bool = False) -> Built:
    from neuralop.models import FNO

    _use_tensorly_einsum(opt_einsum)
    torch.manual_seed(SEED)
    model = FNO(n_modes=(4, 4), in_channels=1, out_channels=1, hidden_channels=8, n_layers=2,
                channel_mlp_dropout=0.0)
    x = torch.randn(batch, 1, 16, 16)
    target = torch.randn(batch, 1, 16, 16)
    return _train(model), {"x": x}, {"target": target}


def _fno_opt_einsum(batch: int = 2) -> Built:
    return _fno(batch, opt_einsum=True)


# --------------------------------------------------------------------------------------------
# plain-torch patterns

class InplaceMLP(nn.Module):
    """In-place activations and in-place adds on tensors autograd allows to be mutated."""

    def __init__(self, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.skip = nn.Linear(dim, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, dim)
        self.act2 = nn.ReLU(inplace=True)
        self.fc3 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h.add_(self.skip(x))          # fc1's output is not saved by autograd: free to mutate
        h = self.act(h)               # in-place ReLU (saves its own result)
        y = self.fc2(h)
        y.add_(x)                     # residual, in place
        y.mul_(0.5)
        y = self.act2(y)
        return self.fc3(y)


def _inplace_mlp(batch: int = 2) -> Built:
    torch.manual_seed(SEED)
    model = InplaceMLP()
    x = torch.randn(batch, SEQ, 32)
    target = torch.randn(batch, SEQ, 32)
    return _train(model), {"x": x}, {"target": target}


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class GraphBreakNet(nn.Module):
    """Two blocks with an explicit Dynamo graph break between them: two graphs per step."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.block1 = Block(dim)
        self.block2 = Block(dim)
        self.head = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        torch._dynamo.graph_break()
        return self.head(self.block2(h))


def _graph_break(batch: int = 2) -> Built:
    torch.manual_seed(SEED)
    model = GraphBreakNet()
    x = torch.randn(batch, SEQ, 32)
    target = torch.randn(batch, SEQ, 32)
    return _train(model), {"x": x}, {"target": target}


# --------------------------------------------------------------------------------------------
# the zoo

_CASES = [
    ZooCase("hf_gpt2", _gpt2, hf_loss, tags=("hf", "decoder")),
    ZooCase("hf_llama", _llama, hf_loss, tags=("hf", "decoder")),
    ZooCase("hf_qwen2", _qwen2, hf_loss, tags=("hf", "decoder")),
    ZooCase("hf_bert", _bert, hf_loss, tags=("hf", "encoder")),
    ZooCase("hf_t5", _t5, hf_loss, tags=("hf", "encoder-decoder")),
    ZooCase("hf_vit", _vit, hf_loss, tags=("hf", "vision")),
    ZooCase("hf_whisper", _whisper, hf_loss, tags=("hf", "audio", "encoder-decoder")),
    ZooCase("hf_resnet", _resnet, hf_loss, tags=("hf", "vision", "batchnorm")),
    ZooCase("diffusers_unet", _unet, unet_loss, tags=("diffusers", "vision", "attention")),
    ZooCase("fno", _fno, mse_loss, tags=("neuralop", "fft", "complex")),
    ZooCase("fno_opt_einsum", _fno_opt_einsum, mse_loss, graph_breaks=True,
            tags=("neuralop", "fft", "complex", "pattern", "graph-break")),
    ZooCase("hf_llama_checkpointing", _llama_checkpointing, hf_loss,
            tags=("hf", "pattern", "checkpointing")),
    ZooCase("hf_gpt2_dropout", _gpt2_dropout, hf_loss, deterministic=False,
            tags=("hf", "pattern", "dropout")),
    ZooCase("hf_llama_autocast_bf16", _llama, hf_loss, autocast=torch.bfloat16,
            rtol=5e-2, atol=5e-2, tags=("hf", "pattern", "autocast")),
    ZooCase("inplace_mlp", _inplace_mlp, mse_loss, tags=("pattern", "inplace")),
    ZooCase("hf_gpt2_dynamic_batch", _gpt2, hf_loss, dynamic_batch=True,
            tags=("hf", "pattern", "dynamic")),
    ZooCase("graph_break", _graph_break, mse_loss, graph_breaks=True,
            tags=("pattern", "graph-break")),
]

ZOO: dict[str, ZooCase] = {case.name: case for case in _CASES}


def get(case: ZooCase | str) -> ZooCase:
    return ZOO[case] if isinstance(case, str) else case


def build(case: ZooCase | str, batch: int = 2) -> Built:
    """``(model, inputs, targets)`` for a case or its name."""
    return get(case).build(batch=batch)


# --------------------------------------------------------------------------------------------
# running a step

def autocast_context(case: ZooCase, device: str = "cpu") -> contextlib.AbstractContextManager:
    if case.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=case.autocast)


def forward_loss(case: ZooCase | str, model: nn.Module, inputs: Inputs, targets: Inputs,
                 device: str = "cpu") -> torch.Tensor:
    """Forward + loss (under the case's autocast); the caller calls ``backward``."""
    case = get(case)
    with autocast_context(case, device):
        return case.loss(model(**inputs), targets)


def mark_dynamic_batch(inputs: Inputs) -> None:
    for value in inputs.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            torch._dynamo.mark_dynamic(value, 0)


def _step(case: ZooCase, model: nn.Module, run: nn.Module | Callable[..., Any], inputs: Inputs,
          targets: Inputs, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(seed)
    loss = forward_loss(case, run, inputs, targets)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()
             if p.grad is not None}
    return loss.detach(), grads


def eager_step(case: ZooCase | str, batch: int = 2, seed: int = SEED
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Build the case, run forward + loss + backward eagerly; (loss, {param name: grad})."""
    case = get(case)
    model, inputs, targets = case.build(batch=batch)
    return _step(case, model, model, inputs, targets, seed)


def compiled_step(case: ZooCase | str, backend: Any = "inductor", batch: int = 2,
                  seed: int = SEED, **compile_kwargs: Any
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """As ``eager_step`` through ``torch.compile(model, backend=backend, **compile_kwargs)``.

    Gradient names are the original module's (no ``_orig_mod.`` prefix)."""
    case = get(case)
    model, inputs, targets = case.build(batch=batch)
    if case.dynamic_batch:
        mark_dynamic_batch(inputs)
    compiled = torch.compile(model, backend=backend, **compile_kwargs)
    return _step(case, model, compiled, inputs, targets, seed)


def max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest ``max|a - b| / max|a|`` over the tensors of ``a`` (gradients by name).

    The denominator is floored at 1e-5 of the largest ``|a|`` of all tensors: gradients that are
    zero in exact arithmetic (an attention key bias: softmax ignores a per-query constant) hold
    rounding noise of ~1e-12 that differs between eager and compiled and means nothing."""
    if not a:
        return 0.0
    floor = 1e-5 * max(x.abs().max().item() for x in a.values() if x.numel()) + 1e-30
    worst = 0.0
    for name, x in a.items():
        if not x.numel():
            continue
        y = b[name].to(x.dtype)
        diff = (x - y).abs().max().item()
        worst = max(worst, diff / max(x.abs().max().item(), floor))
    return worst
