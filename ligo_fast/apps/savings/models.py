"""The experiment's models: byte-level causal LMs (Llama or GPT-2) of a :class:`~.presets.ModelSize`.

Imports torch, transformers and the vocabulary of :mod:`.corpus`.
"""

from __future__ import annotations

import torch
import transformers
from torch import nn

import ligo_fast

from .corpus import BOS, EOS, PAD, VOCAB_SIZE
from .presets import ModelSize


def _check_heads(size: ModelSize) -> None:
    if size.hidden % size.heads:
        raise ValueError(f"heads={size.heads} does not divide hidden={size.hidden}")


def make_config(size: ModelSize, seq_len: int, family: str = "llama"):
    """HF config of a byte-level causal LM of this shape (no dropout, untied Llama head)."""
    _check_heads(size)
    if family == "llama":
        return transformers.LlamaConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=size.hidden,
            intermediate_size=size.ffn,
            num_hidden_layers=size.layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.heads,
            max_position_embeddings=seq_len,
            tie_word_embeddings=False,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB_SIZE,
            n_positions=seq_len,
            n_embd=size.hidden,
            n_layer=size.layers,
            n_head=size.heads,
            n_inner=size.ffn,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
    raise ValueError(f"unknown family {family!r}; use 'llama' or 'gpt2'")


def grown_config(small_config, size: ModelSize):
    """The large config of a growth from ``small_config`` to ``size``: :func:`ligo_fast.large_config` (what users
    call; derived fields recomputed), the shape given in full (Llama: the head size ``hidden / heads`` too), so it
    equals :func:`make_config` of ``size``."""
    _check_heads(size)
    if small_config.model_type == "llama":
        changes = dict(hidden_size=size.hidden, intermediate_size=size.ffn, num_hidden_layers=size.layers,
                       num_attention_heads=size.heads, num_key_value_heads=size.heads,
                       head_dim=size.hidden // size.heads)  # fmt: skip
    else:
        changes = dict(n_embd=size.hidden, n_layer=size.layers, n_head=size.heads, n_inner=size.ffn)
    return ligo_fast.large_config(small_config, **changes)


def model_class(family: str) -> type:
    """The HF class of ``family`` (``llama`` or ``gpt2``)."""
    return {"llama": transformers.LlamaForCausalLM, "gpt2": transformers.GPT2LMHeadModel}[family]


def new_model(config, seed: int, device: str | torch.device = "cpu") -> nn.Module:
    """A freshly initialised causal LM (HF init, seeded)."""
    family = "llama" if config.model_type == "llama" else "gpt2"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(family)(config)
    return model.to(device)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
