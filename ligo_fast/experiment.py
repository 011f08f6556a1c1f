"""The growth-savings experiment: how much training compute does growing from a small model save?

Pipeline (``run_experiment``):

1. **Data.** Real text, no network: by default the ``*.py`` files of the Python standard library on this
   machine (``sysconfig.get_paths()['stdlib']``, ``site-packages``/``dist-packages`` excluded), or any file or
   directory of text files. Byte-level tokens (ids 0..255) plus specials (:data:`EOS` ends every file). The
   validation set is a fixed, seeded set of whole *files* (``split_files``); a single file is split by bytes.
2. **Small model.** A small causal LM (Llama-style by default) is pretrained on the training split.
3. **Large models**, three ways, all trained afterwards with the same AdamW, schedule, batches and token
   budget:

   * ``ligo``: :func:`ligo_fast.grow` (default operator options), the operator trained ``ligo_steps`` steps
     on the LM loss, then :func:`ligo_fast.materialize`;
   * ``stack``: ``grow(depth_init='stackbert', width_init='sel')`` materialised directly (StackBERT-style
     stacking; new width neurons copy old ones), no operator steps;
   * ``scratch``: the large model from random initialisation.

4. **Accounting.** Training FLOPs are counted analytically (:func:`forward_flops_per_token`,
   :func:`production_flops`, :func:`operator_step_flops`); wall time is measured around the training steps
   (evaluation excluded). For each method: the FLOPs and wall time needed to reach the validation loss that
   ``scratch`` reaches at the end, with and without the small model's pretraining cost, and the % saved
   against ``scratch``.
5. **Outputs.** ``write_table`` (markdown) and ``plot`` (PNG: validation loss vs FLOPs, one curve per method).

Library code logs through :mod:`logging` and shows a tqdm bar; the command line is :mod:`ligo_fast.demo`
(``make demo``; ``benchmarks/growth_savings.py`` is the same CLI).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import random
import re
import sysconfig
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- tokens
BYTE_VOCAB = 256
BOS, EOS, PAD = 256, 257, 258
VOCAB_SIZE = 264
"""Byte ids 0..255, then BOS/EOS/PAD; 259..263 are unused (the vocabulary is rounded up to a multiple of 8)."""

METHODS = ("ligo", "stack", "scratch")
METHOD_LABELS = {
    "ligo": "LiGO (operator + materialise)",
    "stack": "Stacking (stackbert + sel, no operator)",
    "scratch": "Scratch (no growth)",
}


# ---------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class ModelSize:
    """Shape of one causal LM. ``heads`` query heads (and as many key/value heads); ``ffn`` the MLP width."""

    hidden: int
    layers: int
    heads: int
    ffn: int


@dataclass(frozen=True)
class Preset:
    """Sizes and budgets of one experiment.

    Attributes:
        family: ``llama`` (LlamaForCausalLM) or ``gpt2`` (GPT2LMHeadModel).
        small, large: model shapes (head size ``hidden // heads`` is kept equal, as BERT-Small -> Base does).
        seq_len, batch_size: every step (small, operator, large) sees ``batch_size * seq_len`` tokens.
        small_steps: pretraining steps of the small model.
        large_steps: training steps of each large model (the shared token budget).
        ligo_steps: operator training steps (LiGO only).
        lr, small_lr, ligo_lr: peak AdamW learning rates (large models, small model, operator).
        weight_decay: AdamW weight decay of model weights (the operator uses none).
        warmup_frac: linear warm-up fraction of each run; then cosine decay to ``min_lr_frac * peak``.
        eval_every: validation every this many large/small steps (operator: ``ligo_eval_every``).
        eval_batches: validation batches (of ``batch_size`` windows each), a fixed set.
        val_fraction: share of files held out for validation.
        max_files: use only this many corpus files (after sorting; None: all).
    """

    name: str
    small: ModelSize
    large: ModelSize
    seq_len: int
    batch_size: int
    small_steps: int
    large_steps: int
    ligo_steps: int = 100
    family: str = "llama"
    lr: float = 2e-3
    small_lr: float = 3e-3
    ligo_lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    eval_every: int = 25
    ligo_eval_every: int = 25
    eval_batches: int = 4
    val_fraction: float = 0.05
    max_files: int | None = None

    def replace(self, **kw) -> Preset:
        return dataclasses.replace(self, **kw)


PRESETS: dict[str, Preset] = {
    # seconds on a CPU: the unit tests
    "toy": Preset(
        name="toy",
        small=ModelSize(hidden=16, layers=1, heads=2, ffn=32),
        large=ModelSize(hidden=32, layers=2, heads=4, ffn=64),
        seq_len=32,
        batch_size=4,
        small_steps=12,
        large_steps=12,
        ligo_steps=4,
        eval_every=4,
        ligo_eval_every=2,
        eval_batches=2,
        val_fraction=0.25,
    ),
    # ~3 minutes on 2 idle CPU cores, ~6-7 on a shared, loaded one (`make demo`)
    "demo": Preset(
        name="demo",
        small=ModelSize(hidden=64, layers=2, heads=2, ffn=176),
        large=ModelSize(hidden=128, layers=4, heads=4, ffn=352),
        seq_len=128,
        batch_size=16,
        small_steps=300,
        large_steps=400,
        ligo_steps=100,
        eval_every=20,
        ligo_eval_every=20,
        eval_batches=4,
    ),
    # a few minutes on one H200 (`--device cuda`)
    "gpu-small": Preset(
        name="gpu-small",
        small=ModelSize(hidden=256, layers=4, heads=4, ffn=688),
        large=ModelSize(hidden=512, layers=8, heads=8, ffn=1376),
        seq_len=512,
        batch_size=64,
        small_steps=1500,
        large_steps=1500,
        ligo_steps=100,
        lr=1e-3,
        small_lr=2e-3,
        ligo_lr=1e-3,
        eval_every=100,
        ligo_eval_every=25,
        eval_batches=8,
    ),
    # BERT-Small -> BERT-Base shapes (L4/d512 -> L12/d768), as in the paper, on one H200
    "gpu-base": Preset(
        name="gpu-base",
        small=ModelSize(hidden=512, layers=4, heads=8, ffn=1376),
        large=ModelSize(hidden=768, layers=12, heads=12, ffn=2048),
        seq_len=512,
        batch_size=64,
        small_steps=1500,
        large_steps=1000,
        ligo_steps=100,
        lr=6e-4,
        small_lr=1e-3,
        ligo_lr=1e-3,
        eval_every=100,
        ligo_eval_every=25,
        eval_batches=8,
    ),
}


@dataclass(frozen=True)
class Seeds:
    """Every seed the experiment uses (all printed and written to the table)."""

    split: int = 0  # which files are held out
    data: int = 1  # batch sampling (identical batch sequence for every large model)
    small_init: int = 2  # small model initialisation
    large_init: int = 3  # scratch model initialisation
    ligo: int = 4  # operator initial draws (LiGO and stacking)

    @classmethod
    def from_base(cls, base: int) -> Seeds:
        return cls(base, base + 1, base + 2, base + 3, base + 4)


# ---------------------------------------------------------------------------------------------- corpus
def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The standard library's own ``*.py`` files, sorted by path (``site-packages``/``dist-packages`` excluded)."""
    root = stdlib_root()
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if p.is_file() and not skip.intersection(p.relative_to(root).parts))


def _is_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    return b"\0" not in head


def collect_files(path: str | os.PathLike | None = None) -> list[Path]:
    """The corpus files, sorted. ``None``: the stdlib's ``*.py``; a file: itself; a directory: every text file
    under it (hidden entries and files with NUL bytes in their first 4 KiB skipped)."""
    if path is None:
        files = stdlib_files()
    else:
        p = Path(path)
        if p.is_file():
            files = [p]
        elif p.is_dir():
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts) and _is_text(f)
            )
        else:
            raise FileNotFoundError(f"corpus path {path} does not exist")
    if not files:
        raise ValueError(f"no text files found in {path or stdlib_root()}")
    return files


def split_files(files: Sequence[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic, disjoint train/validation split by file.

    The files are sorted, shuffled with ``random.Random(seed)``, and the first ``ceil(val_fraction * n)`` (at
    least 1, at most n - 1) are the validation set. Both returned lists are sorted. One file: ``([f], [f])``
    and :func:`load_corpus` splits its bytes instead.
    """
    files = sorted(Path(f) for f in files)
    if len(set(files)) != len(files):
        raise ValueError("duplicate corpus files")
    if len(files) == 1:
        return list(files), list(files)
    n_val = min(len(files) - 1, max(1, math.ceil(val_fraction * len(files))))
    order = list(files)
    random.Random(seed).shuffle(order)
    return sorted(order[n_val:]), sorted(order[:n_val])


def encode_files(files: Sequence[Path]) -> Tensor:
    """Byte tokens of the files in order, each followed by :data:`EOS`: int16 tensor (n_tokens,)."""
    parts = []
    eos = torch.tensor([EOS], dtype=torch.int16)
    for f in files:
        data = Path(f).read_bytes()
        if data:
            parts.append(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int16))
            parts.append(eos)
    if not parts:
        raise ValueError("the corpus files are empty")
    return torch.cat(parts)


@dataclass
class Corpus:
    """Token streams: ``train`` and ``val`` int16 tensors (n_tokens,), and the files behind them."""

    train: Tensor
    val: Tensor
    train_files: list[Path]
    val_files: list[Path]
    source: str

    def describe(self) -> str:
        return (
            f"{self.source}: {len(self.train_files)} train files ({self.train.numel() / 1e6:.2f}M tokens), "
            f"{len(self.val_files)} validation files ({self.val.numel() / 1e6:.2f}M tokens)"
        )


def load_corpus(
    path: str | os.PathLike | None = None, val_fraction: float = 0.05, seed: int = 0, max_files: int | None = None
) -> Corpus:
    """Read, split (:func:`split_files`) and tokenize a corpus. A single file is split by bytes: its last
    ``val_fraction`` (at least one byte each side) is the validation stream."""
    files = collect_files(path)
    if max_files is not None:
        files = files[:max_files]
    source = str(path) if path is not None else f"Python {platform.python_version()} stdlib *.py ({stdlib_root()})"
    if len(files) == 1:
        tokens = encode_files(files)
        if tokens.numel() < 4:
            raise ValueError(f"{files[0]} is too short to split")
        cut = min(tokens.numel() - 2, max(2, int(tokens.numel() * (1 - val_fraction))))
        return Corpus(tokens[:cut], tokens[cut:], files, files, source)
    train_files, val_files = split_files(files, val_fraction, seed)
    return Corpus(encode_files(train_files), encode_files(val_files), train_files, val_files, source)


def sample_batch(stream: Tensor, batch_size: int, seq_len: int, gen: torch.Generator) -> Tensor:
    """Random windows of ``seq_len + 1`` tokens: int64 (batch_size, seq_len + 1) (inputs ``[:, :-1]``, targets
    ``[:, 1:]``). Short streams are tiled."""
    if stream.numel() < seq_len + 2:
        stream = stream.repeat(math.ceil((seq_len + 2) / stream.numel()))
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch_size,), generator=gen)
    idx = starts[:, None] + torch.arange(seq_len + 1)
    return stream[idx].long()


def validation_windows(stream: Tensor, n_windows: int, seq_len: int) -> Tensor:
    """A fixed validation set: ``n_windows`` evenly spaced windows, int64 (n_windows, seq_len + 1)."""
    if stream.numel() < seq_len + 2:
        stream = stream.repeat(math.ceil((seq_len + 2) / stream.numel()))
    last = stream.numel() - seq_len - 1
    starts = torch.linspace(0, last, n_windows).long()
    return stream[starts[:, None] + torch.arange(seq_len + 1)].long()


# ---------------------------------------------------------------------------------------------- models
def make_config(size: ModelSize, seq_len: int, family: str = "llama"):
    """HF config of a byte-level causal LM of this shape (no dropout, untied Llama head)."""
    if size.hidden % size.heads:
        raise ValueError(f"heads={size.heads} does not divide hidden={size.hidden}")
    if family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(
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
        from transformers import GPT2Config

        return GPT2Config(
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


def model_class(family: str) -> type:
    import transformers

    return {"llama": transformers.LlamaForCausalLM, "gpt2": transformers.GPT2LMHeadModel}[family]


def new_model(config, seed: int, device: str | torch.device = "cpu") -> nn.Module:
    """A freshly initialised causal LM (HF init, seeded)."""
    family = "llama" if config.model_type == "llama" else "gpt2"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(family)(config)
    return model.to(device)


def growth_family(preferred: str = "llama") -> str:
    """``preferred`` if ``ligo_fast.grow`` supports it, else ``gpt2`` if supported (logged), else an error."""
    import ligo_fast

    names = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}
    supported = ligo_fast.supported_classes()
    if names[preferred] in supported:
        return preferred
    for fam, cls in names.items():
        if cls in supported:
            logger.warning("%s is not supported by ligo_fast.grow yet; falling back to %s", names[preferred], cls)
            return fam
    raise RuntimeError(f"ligo_fast.grow supports neither LlamaForCausalLM nor GPT2LMHeadModel ({supported})")


# ---------------------------------------------------------------------------------------------- FLOPs
def forward_flops_per_token(config, seq_len: int) -> dict[str, int]:
    """Forward FLOPs per token of a decoder-only LM, counted per layer (1 multiply-add = 2 FLOPs).

    Per layer, with ``d`` = hidden, ``a`` = heads * head_dim (query/output width), ``k`` = kv_heads * head_dim,
    ``f`` = MLP width, ``T`` = sequence length:

    * ``qkvo``: Q ``2*d*a``, K ``2*d*k``, V ``2*d*k``, output ``2*a*d``;
    * ``attention``: scores ``Q K^T`` ``2*T*a`` and ``softmax(.) V`` ``2*T*a``: the full T x T matrix, as the
      dense kernels compute it (no discount for the causal mask);
    * ``mlp``: Llama SwiGLU gate + up + down ``3 * 2*d*f``; GPT-2 ``2 * 2*d*f``.

    Once: ``head`` = ``2*d*V``. Not counted: embedding lookups, norms, RoPE, softmax and activation
    elementwise work, the loss (all O(d) or O(V) per token, < 1% here).

    Returns:
        ``{'qkvo', 'attention', 'mlp'}`` per layer, ``'layers'``, ``'head'`` and ``'total'`` per token.
    """
    if config.model_type == "llama":
        d, L, h = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
        hd = getattr(config, "head_dim", None) or d // h
        a, k = h * hd, config.num_key_value_heads * hd
        f, mlp_mats = config.intermediate_size, 3
    elif config.model_type == "gpt2":
        d, L = config.n_embd, config.n_layer
        a = k = d
        f, mlp_mats = config.n_inner or 4 * d, 2
    else:
        raise ValueError(f"no FLOP count for model_type {config.model_type!r}")
    qkvo = 2 * d * a + 2 * 2 * d * k + 2 * a * d
    attention = 2 * seq_len * a + 2 * seq_len * a
    mlp = mlp_mats * 2 * d * f
    head = 2 * d * config.vocab_size
    layers = L * (qkvo + attention + mlp)
    return {"qkvo": qkvo, "attention": attention, "mlp": mlp, "layers": layers, "head": head, "total": layers + head}


def train_step_flops(config, batch_size: int, seq_len: int) -> int:
    """FLOPs of one training step: forward + backward (backward = 2 x forward) over ``batch_size * seq_len``
    tokens, i.e. ``3 * forward_flops_per_token * tokens``. Optimizer update not counted (O(params))."""
    return 3 * forward_flops_per_token(config, seq_len)["total"] * batch_size * seq_len


_LAYER_RE = re.compile(r"\.(\d+)\.")


def _split_layer(name: str) -> tuple[str, int | None]:
    m = _LAYER_RE.search(name)
    if m is None:
        return name, None
    return name[: m.start()] + ".{l}." + name[m.end() :], int(m.group(1))


def production_flops(small_model: nn.Module, large_model: nn.Module) -> int:
    """Forward FLOPs of producing every large weight from the small ones (one LiGO operator forward).

    Per large parameter of shape ``(o2, i2)`` from small ones ``(o1, i1)`` (``L1`` small layers; vectors
    have ``i = 1``), in the order depth mix -> expand dim 0 -> expand dim 1:

    * depth mix (block parameters only): ``2 * L1 * o1 * i1``;
    * new rows ``E_rows @ M``: ``2 * (o2 - o1) * o1 * i1`` (the identity part is a copy);
    * new columns ``M' @ E_cols^T``: ``2 * o2 * (i2 - i1) * i1``.

    Parameters that do not grow cost nothing; tied parameters are counted once.
    """
    small_shapes: dict[str, tuple[tuple[int, ...], int]] = {}
    for name, p in small_model.named_parameters():
        key, layer = _split_layer(name)
        shape, count = small_shapes.get(key, (tuple(p.shape), 0))
        small_shapes[key] = (shape, count + (layer is not None))
    total = 0
    for name, p in large_model.named_parameters():
        key, layer = _split_layer(name)
        if key not in small_shapes:
            raise ValueError(f"the small model has no counterpart of {name}")
        s, L1 = small_shapes[key]
        o1, i1 = s[0], (s[1] if len(s) > 1 else 1)
        o2, i2 = p.shape[0], (p.shape[1] if p.dim() > 1 else 1)
        if layer is not None:
            total += 2 * L1 * o1 * i1
        total += 2 * (o2 - o1) * o1 * i1 + 2 * o2 * (i2 - i1) * i1
    return total


def operator_step_flops(large_config, batch_size: int, seq_len: int, produce_flops: int) -> int:
    """One operator training step: a large forward + backward over the batch plus producing the weights
    forward + backward (``3 * production_flops``)."""
    return train_step_flops(large_config, batch_size, seq_len) + 3 * produce_flops


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- training
@dataclass
class EvalPoint:
    """One validation measurement. ``flops``/``wall_s`` are cumulative for the run, including offsets the
    run was started with (the operator's cost for LiGO); the small model's cost is never included here."""

    phase: str  # 'small', 'operator', 'train'
    step: int
    tokens: int
    flops: float
    wall_s: float
    val_loss: float


def lr_at(step: int, total: int, peak: float, warmup_frac: float, min_frac: float) -> float:
    """Linear warm-up over ``ceil(warmup_frac * total)`` steps, then cosine decay to ``min_frac * peak``."""
    warm = max(1, math.ceil(warmup_frac * total))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def lm_loss(model: nn.Module, windows: Tensor) -> Tensor:
    """Mean next-token cross-entropy (nats) of windows (B, T + 1): inputs ``[:, :-1]``, targets ``[:, 1:]``."""
    logits = model(input_ids=windows[:, :-1]).logits  # (B, T, V)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, val: Tensor, batch_size: int) -> float:
    """Mean validation loss over the fixed windows ``val`` (N, T + 1)."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    total, n = 0.0, 0
    for i in range(0, val.shape[0], batch_size):
        chunk = val[i : i + batch_size].to(device)
        with _autocast(device):
            total += lm_loss(model, chunk).item() * chunk.shape[0]
        n += chunk.shape[0]
    model.train(was_training)
    return total / n


def _device_of(model: nn.Module) -> torch.device:
    return next(p for p in model.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(
    model: nn.Module,
    params: list[nn.Parameter],
    stream: Tensor,
    val: Tensor,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    warmup_frac: float,
    min_lr_frac: float,
    batch_size: int,
    seq_len: int,
    data_seed: int,
    flops_per_step: float,
    eval_every: int,
    phase: str,
    flops_offset: float = 0.0,
    wall_offset: float = 0.0,
    pbar=None,
    on_eval: Callable[[EvalPoint], None] | None = None,
) -> list[EvalPoint]:
    """Train ``params`` of ``model`` with AdamW on random windows of ``stream`` for ``steps`` steps.

    Batches come from ``torch.Generator().manual_seed(data_seed)``, so runs with one seed see the same
    batches. Validation (on ``val``) at step 0, every ``eval_every`` steps and at the end; wall time counts
    only the training steps. Returns the validation curve.
    """
    device = _device_of(model)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(data_seed)
    tokens_per_step = batch_size * seq_len
    curve: list[EvalPoint] = []
    wall = wall_offset

    def record(step: int) -> None:
        point = EvalPoint(
            phase,
            step,
            step * tokens_per_step,
            flops_offset + step * flops_per_step,
            wall,
            evaluate(model, val, batch_size),
        )
        curve.append(point)
        logger.debug("%s step %d: val loss %.4f", phase, step, point.val_loss)
        if pbar is not None:
            pbar.set_postfix(val=f"{point.val_loss:.3f}")
        if on_eval is not None:
            on_eval(point)

    model.train()
    record(0)
    for step in range(steps):
        batch = sample_batch(stream, batch_size, seq_len, gen).to(device, non_blocking=True)
        _sync(device)
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup_frac, min_lr_frac)
        with _autocast(device):
            loss = lm_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        wall += time.perf_counter() - t0
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{phase}: the training loss became {loss.item()} at step {step}")
        if pbar is not None:
            pbar.update(1)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            record(step + 1)
    return curve


# ---------------------------------------------------------------------------------------------- experiment
@dataclass
class MethodResult:
    """One large-model method: its curve (operator phase first for LiGO) and its fixed costs."""

    method: str
    curve: list[EvalPoint]
    setup_flops: float = 0.0  # operator steps (LiGO); 0 otherwise
    setup_wall_s: float = 0.0  # operator steps + growth + materialisation
    notes: dict = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        return self.curve[-1].val_loss


@dataclass
class Result:
    """Everything ``run_experiment`` measured; ``summary()`` gives the table rows."""

    preset: Preset
    seeds: Seeds
    family: str
    device: str
    corpus: str
    small_params: int
    large_params: int
    small_curve: list[EvalPoint]
    small_flops: float
    small_wall_s: float
    methods: dict[str, MethodResult]
    flops: dict[str, float]  # per-step costs and per-token breakdowns
    ligo_trace: dict[str, float]
    total_wall_s: float = 0.0
    meta: dict = field(default_factory=dict)  # date, machine, torch threads, load average, versions

    @property
    def target(self) -> float:
        """The validation loss scratch reaches at the end of its budget."""
        return self.methods["scratch"].final_loss

    def summary(self) -> list[dict]:
        """One row per method: cost to reach :attr:`target` (None if never reached) and savings vs scratch."""
        rows = []
        target = self.target
        for name, m in self.methods.items():
            f = cost_to_reach(m.curve, target, "flops")
            w = cost_to_reach(m.curve, target, "wall_s")
            st = cost_to_reach(m.curve, target, "step")
            extra = name != "scratch"
            rows.append(
                {
                    "method": name,
                    "final_loss": m.final_loss,
                    "steps": st,
                    "flops": f,
                    "wall_s": w,
                    "flops_with_small": None if f is None else f + (self.small_flops if extra else 0.0),
                    "wall_with_small": None if w is None else w + (self.small_wall_s if extra else 0.0),
                    "setup_flops": m.setup_flops,
                }
            )
        base = next(r for r in rows if r["method"] == "scratch")
        for r in rows:
            for k in ("flops", "wall_s", "flops_with_small", "wall_with_small"):
                r[k + "_saved"] = None if r[k] is None or not base[k] else 1.0 - r[k] / base[k]
        return rows

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["target"] = self.target
        d["summary"] = self.summary()
        return d


def cost_to_reach(curve: Sequence[EvalPoint], target: float, key: str = "flops") -> float | None:
    """``key`` (``flops``, ``wall_s`` or ``step``) at which the curve first reaches ``val_loss <= target``, linearly
    interpolated between the two evaluations around the crossing; None if it never does.

    Only ``train``-phase points count: a LiGO run pays for all its operator steps before its first training
    point, even if the produced model were already below the target during operator training."""
    prev = None
    for p in (pt for pt in curve if pt.phase == "train"):
        if p.val_loss <= target:
            if prev is None or prev.val_loss == p.val_loss:
                return float(getattr(p, key))
            frac = (prev.val_loss - target) / (prev.val_loss - p.val_loss)
            return float(getattr(prev, key) + frac * (getattr(p, key) - getattr(prev, key)))
        prev = p
    return None


def run_experiment(
    preset: Preset | str = "demo",
    *,
    corpus: str | os.PathLike | None = None,
    device: str = "cpu",
    seeds: Seeds | None = None,
    methods: Sequence[str] = METHODS,
    family: str | None = None,
    progress: bool = True,
    on_event: Callable[[str, dict], None] | None = None,
) -> Result:
    """Run the whole experiment (see the module docstring) and return its measurements.

    Args:
        preset: a :class:`Preset` or a name in :data:`PRESETS`.
        corpus: text file or directory; None: the Python stdlib's ``*.py`` files.
        device: torch device (``cuda`` trains in bf16 autocast).
        seeds: all seeds (default ``Seeds()``).
        methods: subset of :data:`METHODS`; ``scratch`` is always run (it defines the target).
        family: ``llama``/``gpt2``; None: ``preset.family`` if ``grow`` supports it, else the fallback.
        progress: show a tqdm bar.
        on_event: called with ``(name, data)`` at milestones (``small_done``, ``ligo_grown``,
            ``ligo_operator_eval``, ``ligo_materialized``, ``method_eval``, ``method_done``) for live printing.
    """
    from tqdm.auto import tqdm

    import ligo_fast

    p = PRESETS[preset] if isinstance(preset, str) else preset
    seeds = seeds or Seeds()
    methods = [m for m in METHODS if m in set(methods) | {"scratch"}]
    grow_methods = [m for m in methods if m != "scratch"]
    family = family or (growth_family(p.family) if grow_methods else p.family)
    dev = torch.device(device)
    emit = on_event or (lambda name, data: None)
    t_start = time.perf_counter()
    meta = run_metadata(device)

    data = load_corpus(corpus, p.val_fraction, seeds.split, p.max_files)
    logger.info("corpus %s", data.describe())
    val = validation_windows(data.val, p.eval_batches * p.batch_size, p.seq_len)
    small_cfg = make_config(p.small, p.seq_len, family)
    large_cfg = make_config(p.large, p.seq_len, family)
    common = dict(
        weight_decay=p.weight_decay,
        warmup_frac=p.warmup_frac,
        min_lr_frac=p.min_lr_frac,
        batch_size=p.batch_size,
        seq_len=p.seq_len,
    )

    small_step = train_step_flops(small_cfg, p.batch_size, p.seq_len)
    large_step = train_step_flops(large_cfg, p.batch_size, p.seq_len)
    total_steps = p.small_steps + len(methods) * p.large_steps + ("ligo" in methods) * p.ligo_steps
    pbar = tqdm(total=total_steps, disable=not progress, unit="step", dynamic_ncols=True)

    # 1. the small model
    pbar.set_description("small pretrain")
    small = new_model(small_cfg, seeds.small_init, dev)
    small_curve = train(
        small,
        list(small.parameters()),
        data.train,
        val,
        steps=p.small_steps,
        lr=p.small_lr,
        data_seed=seeds.data + 1000,
        flops_per_step=small_step,
        eval_every=p.eval_every,
        phase="small",
        pbar=pbar,
        **common,
    )
    small_wall = small_curve[-1].wall_s
    small_flops = small_curve[-1].flops
    small.eval()
    emit("small_done", {"val_loss": small_curve[-1].val_loss, "flops": small_flops, "wall_s": small_wall})

    blank_large = model_class(family)(large_cfg)
    large_params = param_count(blank_large)
    produce = production_flops(small, blank_large)
    del blank_large
    op_step = operator_step_flops(large_cfg, p.batch_size, p.seq_len, produce)
    trace: dict[str, float] = {"small": small_curve[-1].val_loss}
    results: dict[str, MethodResult] = {}

    for name in methods:
        setup_flops, setup_wall, pre_curve, notes = 0.0, 0.0, [], {}
        if name == "scratch":
            pbar.set_description("scratch")
            large = new_model(large_cfg, seeds.large_init, dev)
        elif name == "stack":
            pbar.set_description("stack")
            _sync(dev)
            t0 = time.perf_counter()
            grown = ligo_fast.grow(small, large_cfg, depth_init="stackbert", width_init="sel", seed=seeds.ligo)
            large = ligo_fast.materialize(grown)
            _sync(dev)
            setup_wall = time.perf_counter() - t0
            del grown
            notes["val_loss_grown"] = evaluate(large, val, p.batch_size)
        else:  # ligo
            pbar.set_description("LiGO operator")
            _sync(dev)
            t0 = time.perf_counter()
            op_model = ligo_fast.grow(small, large_cfg, seed=seeds.ligo)
            _sync(dev)
            grow_wall = time.perf_counter() - t0
            op_params = [q for q in op_model.parameters() if q.requires_grad]
            notes["operator_params"] = sum(q.numel() for q in op_params)
            before = evaluate(op_model, val, p.batch_size)
            trace["grown_before_operator"] = before
            emit("ligo_grown", {"val_loss": before, "operator_params": notes["operator_params"]})
            pre_curve = train(
                op_model,
                op_params,
                data.train,
                val,
                steps=p.ligo_steps,
                lr=p.ligo_lr,
                **{**common, "weight_decay": 0.0},
                data_seed=seeds.data + 2000,
                flops_per_step=op_step,
                eval_every=p.ligo_eval_every,
                phase="operator",
                wall_offset=grow_wall,
                pbar=pbar,
                on_eval=lambda pt: emit("ligo_operator_eval", dataclasses.asdict(pt)),
            )
            _sync(dev)
            t0 = time.perf_counter()
            large = ligo_fast.materialize(op_model).train()
            _sync(dev)
            setup_wall = pre_curve[-1].wall_s + time.perf_counter() - t0
            setup_flops = pre_curve[-1].flops
            del op_model, op_params
            after = evaluate(large, val, p.batch_size)
            trace["after_operator_materialized"] = after
            emit("ligo_materialized", {"val_loss": after, "flops": setup_flops, "wall_s": setup_wall})
            pbar.set_description("LiGO train")

        def on_eval(pt: EvalPoint, name=name) -> None:
            emit("method_eval", {"method": name, **dataclasses.asdict(pt)})
            if name == "ligo":
                trace[f"train_step_{pt.step}"] = pt.val_loss

        curve = train(
            large,
            list(large.parameters()),
            data.train,
            val,
            steps=p.large_steps,
            lr=p.lr,
            data_seed=seeds.data,
            flops_per_step=large_step,
            eval_every=p.eval_every,
            phase="train",
            flops_offset=setup_flops,
            wall_offset=setup_wall,
            pbar=pbar,
            on_eval=on_eval,
            **common,
        )
        results[name] = MethodResult(name, pre_curve + curve, setup_flops, setup_wall, notes)
        emit("method_done", {"method": name, "final_loss": curve[-1].val_loss})
        del large
    pbar.close()

    return Result(
        preset=p,
        seeds=seeds,
        family=family,
        device=str(dev),
        corpus=data.describe(),
        small_params=param_count(small),
        large_params=large_params,
        small_curve=small_curve,
        small_flops=small_flops,
        small_wall_s=small_wall,
        methods=results,
        flops={
            "small_step": small_step,
            "large_step": large_step,
            "operator_step": op_step,
            "production_forward": produce,
            "small_per_token": forward_flops_per_token(small_cfg, p.seq_len),
            "large_per_token": forward_flops_per_token(large_cfg, p.seq_len),
        },
        ligo_trace=trace,
        total_wall_s=time.perf_counter() - t_start,
        meta=meta,
    )


def run_metadata(device: str) -> dict:
    """Date, machine, torch threads, 1-minute load average at the start, library versions."""
    import transformers

    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine_description(device),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------------------- outputs
def _fmt_flops(x: float | None) -> str:
    if x is None:
        return "not reached"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.3g}"


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "not reached"
    return f"{x:.1f} s" if x >= 10 else f"{x:.2f} s"


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def machine_description(device: str) -> str:
    """``N-core CPU, no GPU`` or the GPU's name."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} GPU, {os.cpu_count()}-core CPU"
    gpu = "GPU present but unused" if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core CPU, {gpu} ({torch.get_num_threads()} torch threads)"


def verdict(result: Result, tie_tolerance: float = 0.02) -> str:
    """Honest sentences on who wins, from the FLOPs-to-target column (small model excluded). LiGO and
    stacking count as tied when their costs differ by less than ``tie_tolerance`` of scratch's cost."""
    rows = {r["method"]: r for r in result.summary()}
    lines = []
    lig, stk = rows.get("ligo"), rows.get("stack")
    for name, r in (("LiGO", lig), ("Stacking", stk)):
        if r is None:
            continue
        if r["flops"] is None:
            lines.append(f"{name} did not reach the scratch target loss within the budget.")
        else:
            word = "saves" if r["flops_saved"] > 0 else "costs"
            lines.append(
                f"{name} {word} {abs(100 * r['flops_saved']):.1f}% FLOPs vs scratch "
                f"({abs(100 * r['flops_with_small_saved']):.1f}% "
                f"{'saved' if r['flops_with_small_saved'] > 0 else 'extra'} counting the small model)."
            )
    if lig and stk:
        lf, sf = lig["flops"], stk["flops"]
        base = rows["scratch"]["flops"]
        if lf is None and sf is None:
            lines.append("Neither growth method reaches scratch's final loss at this scale.")
        elif lf is not None and sf is not None and abs(lf - sf) < tie_tolerance * base:
            lines.append(
                f"LiGO and stacking are within {100 * tie_tolerance:.0f}% of scratch's cost of each other: "
                "no clear winner between them at this scale (one seed)."
            )
        elif lf is not None and (sf is None or lf < sf):
            lines.append("LiGO beats stacking at this scale.")
        else:
            lines.append("LiGO does **not** beat stacking at this scale.")
    return " ".join(lines)


def format_table(result: Result) -> str:
    """The markdown results table (one row per method)."""
    head = (
        "| method | final val loss | train steps to target | FLOPs to target | saved | FLOPs to target incl. small "
        "| saved | wall to target | saved | wall incl. small | saved |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in result.summary():
        steps = "not reached" if r["steps"] is None else f"{r['steps']:.0f}"
        lines.append(
            f"| {METHOD_LABELS[r['method']]} | {r['final_loss']:.4f} | {steps} | {_fmt_flops(r['flops'])} "
            f"| {_fmt_pct(r['flops_saved'])} | {_fmt_flops(r['flops_with_small'])} "
            f"| {_fmt_pct(r['flops_with_small_saved'])} | {_fmt_s(r['wall_s'])} | {_fmt_pct(r['wall_s_saved'])} "
            f"| {_fmt_s(r['wall_with_small'])} | {_fmt_pct(r['wall_with_small_saved'])} |"
        )
    return head + "\n".join(lines) + "\n"


def write_table(result: Result, path: str | os.PathLike, command: str = "", date: str | None = None) -> Path:
    """Write the markdown report (setup, table, verdict, LiGO trace, FLOP accounting) to ``path``."""
    p, s = result.preset, result.seeds
    meta = result.meta or run_metadata(result.device)
    date = date or meta["date"]
    fl = result.flops
    trace = result.ligo_trace
    sm, lg = p.small, p.large
    text = [
        f"# Growth savings: LiGO vs stacking vs scratch ({p.name} preset)\n",
        f"- command: `{command}`" if command else "- command: (library call)",
        f"- date: {date}; machine: {meta['machine']}; device `{result.device}`; "
        f"total run time {result.total_wall_s / 60:.1f} min; 1-min load average at start "
        f"{meta['load_average_at_start']} (a shared machine: wall times are noisy, FLOPs are not)",
        f"- versions: torch {meta['torch']}, transformers {meta['transformers']}, Python {meta['python']}",
        f"- seeds: split={s.split}, data={s.data}, small_init={s.small_init}, large_init={s.large_init}, ligo={s.ligo}",
        f"- corpus: {result.corpus}; byte-level tokens (vocab {VOCAB_SIZE})",
        f"- model family: {result.family}; small: L{sm.layers} d{sm.hidden} h{sm.heads} ffn{sm.ffn} "
        f"({result.small_params / 1e6:.2f}M params) -> large: L{lg.layers} d{lg.hidden} h{lg.heads} ffn{lg.ffn} "
        f"({result.large_params / 1e6:.2f}M params)",
        f"- budget: small {p.small_steps} steps; each large model {p.large_steps} steps of "
        f"{p.batch_size}x{p.seq_len} tokens (AdamW lr {p.lr}, wd {p.weight_decay}, warm-up {p.warmup_frac:.0%}, "
        f"cosine to {p.min_lr_frac:.0%}); LiGO operator {p.ligo_steps} steps (AdamW lr {p.ligo_lr}, "
        f"{p.ligo_steps * p.batch_size * p.seq_len:,} extra tokens, counted in its FLOPs)",
        f"- target: the validation loss scratch reaches at the end = **{result.target:.4f}** nats/byte\n",
        format_table(result),
        f"**Verdict:** {verdict(result)}\n",
        "Costs are to the *first* evaluation at or below the target (linear interpolation between evaluations, "
        f"every {p.eval_every} steps). 'saved' is relative to scratch's cost to the same target. The LiGO "
        "row includes its operator steps; 'incl. small' adds the small model's pretraining "
        f"({_fmt_flops(result.small_flops)}, {result.small_wall_s:.1f} s) to the growth methods. Wall time "
        "counts training steps, growth and materialisation, not evaluation.\n",
        "## LiGO trace (validation loss)\n",
        f"- small model after pretraining: {trace.get('small', float('nan')):.4f}",
    ]
    if "grown_before_operator" in trace:
        text += [
            f"- grown model before operator training: {trace['grown_before_operator']:.4f}",
            f"- after {p.ligo_steps} operator steps, materialised: {trace['after_operator_materialized']:.4f}",
        ]
        steps = sorted(int(k.rsplit("_", 1)[1]) for k in trace if k.startswith("train_step_"))
        if steps:
            text.append(
                "- during training: " + ", ".join(f"step {st}: {trace[f'train_step_{st}']:.4f}" for st in steps)
            )
    if "stack" in result.methods:
        text.append(
            f"- (stacking, grown, before training: {result.methods['stack'].notes['val_loss_grown']:.4f}; "
            "`width_init='sel'` copies old neurons into the new ones without splitting their outgoing weights, "
            "so a width-grown stacked model is not function-preserving)"
        )
    sp, lp = fl["small_per_token"], fl["large_per_token"]
    text += [
        "\n## FLOP accounting\n",
        "Forward FLOPs per token per layer: Q/K/V/O projections `2*d*a + 4*d*k + 2*a*d`, attention scores and "
        "weighted sum `4*T*a` (full TxT, no causal discount), MLP `3*2*d*f` (SwiGLU; GPT-2 `2*2*d*f`); plus "
        "the LM head `2*d*V` once. A training step is forward + backward = 3x forward over all tokens. An "
        "operator step is a large training step plus 3x the weight production (depth mix `2*L1*o1*i1`, new rows "
        "`2*(o2-o1)*o1*i1`, new columns `2*o2*(i2-i1)*i1` per produced tensor). Not counted: embeddings, norms, "
        "RoPE, elementwise ops, optimizer updates.\n",
        "| | qkvo/layer | attention/layer | mlp/layer | head | forward/token | train step |",
        "|---|---|---|---|---|---|---|",
        f"| small | {sp['qkvo']:,} | {sp['attention']:,} | {sp['mlp']:,} | {sp['head']:,} | {sp['total']:,} "
        f"| {fl['small_step']:,} |",
        f"| large | {lp['qkvo']:,} | {lp['attention']:,} | {lp['mlp']:,} | {lp['head']:,} | {lp['total']:,} "
        f"| {fl['large_step']:,} |",
        f"\nOperator step: {fl['operator_step']:,} FLOPs (weight production forward {fl['production_forward']:,}).",
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n")
    return path


def plot(result: Result, path: str | os.PathLike) -> Path:
    """PNG: validation loss vs training FLOPs, one curve per method; left without, right with the small
    model's pretraining cost. The LiGO operator phase is drawn dotted; the dashed line is the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {"ligo": "tab:red", "stack": "tab:blue", "scratch": "tab:gray"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    all_losses = [pt.val_loss for m in result.methods.values() for pt in m.curve]
    for ax, with_small in zip(axes, (False, True), strict=True):
        if with_small:
            xs = [pt.flops for pt in result.small_curve]
            ax.plot(xs, [pt.val_loss for pt in result.small_curve], color="tab:green", lw=1, label="small model")
        for name, m in result.methods.items():
            off = result.small_flops if (with_small and name != "scratch") else 0.0
            op = [pt for pt in m.curve if pt.phase == "operator"]
            tr = [pt for pt in m.curve if pt.phase == "train"]
            if op:
                ax.plot([off + pt.flops for pt in op], [pt.val_loss for pt in op], ":", color=colors[name], lw=1.5)
            ax.plot(
                [off + pt.flops for pt in tr],
                [pt.val_loss for pt in tr],
                color=colors[name],
                lw=1.8,
                label=METHOD_LABELS[name],
            )
        ax.axhline(result.target, ls="--", color="k", lw=0.8, label=f"target {result.target:.3f}")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: _fmt_flops(x) if x > 0 else "0"))
        ax.set_xlabel("training FLOPs" + (" (incl. small model pretraining)" if with_small else ""))
        ax.set_title("including the small model" if with_small else "small model given (as in the paper)")
        ax.grid(alpha=0.3)
    lo = min(all_losses)
    hi = sorted(all_losses)[int(0.9 * (len(all_losses) - 1))]
    axes[0].set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.3 * (hi - lo + 1e-9))
    axes[0].set_ylabel("validation loss (nats/byte)")
    axes[1].legend(fontsize=8)
    p = result.preset
    fig.suptitle(
        f"{result.family}: L{p.small.layers}/d{p.small.hidden} -> L{p.large.layers}/d{p.large.hidden}, "
        f"{p.large_steps} steps x {p.batch_size * p.seq_len} tokens ({p.name} preset)"
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(result: Result, path: str | os.PathLike) -> Path:
    """All curves and settings as JSON (paths as strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json(), indent=1, default=str))
    return path
