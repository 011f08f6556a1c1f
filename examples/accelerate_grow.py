"""LiGO in an ordinary ``accelerate`` script: grow a small causal LM, train the operator (DDP over every process
the script is launched with), checkpoint and resume, materialise, and keep training the plain large model.

    accelerate launch --cpu --num_processes 2 examples/accelerate_grow.py --out runs/accelerate_grow
    python examples/accelerate_grow.py --out runs/accelerate_grow              # one process
    ... --resume                                                               # continue from the last checkpoint

By default the small model is a tiny random Llama and the data a synthetic counting language, so that the script
runs anywhere in seconds; pass ``--small DIR`` (an HF causal LM) and use your own data loader for real work.
``tests/test_accelerate.py`` runs it on 2 CPU processes (gloo) against one process on the same global batches.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch
import transformers
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

import ligo_fast
from ligo_fast.integrations.accelerator import ddp_kwargs

logger = logging.getLogger("accelerate_grow")


def counting_data(n: int, seq: int, vocab: int, seed: int = 0) -> TensorDataset:
    """``n`` sequences ``x[t+1] = (x[t] + k) % vocab`` with a random start and stride ``k`` in 1..4: learnable."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    stride = torch.randint(1, 5, (n, 1), generator=g)
    return TensorDataset((start + stride * torch.arange(seq)) % vocab)


def default_models(seed: int = 0):
    """A tiny random Llama and a large config twice as wide and deep."""
    shape = dict(vocab_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    small_cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, **shape)
    large_cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, **shape)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(small_cfg), large_cfg


class Progress:
    """Finished operator steps, saved and restored with ``accelerator.save_state`` / ``load_state``."""

    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def grow_and_train(
    small,
    large_config,
    dataset,
    *,
    batch_size: int,
    operator_steps: int,
    large_steps: int,
    operator_lr: float = 1e-3,
    lr: float = 1e-3,
    warmup: int = 0,
    out: Path,
    save_every: int = 0,
    resume: bool = False,
    seed: int = 0,
) -> dict:
    """Train the operator for ``operator_steps``, materialise, train the large model for ``large_steps``.

    ``batch_size`` is per process; batches are taken in order (process r gets batches r, r + P, ...). Returns the
    mean losses of the steps this call ran (from operator step ``first_step`` on) and the large model (on every
    process).
    """
    ligo = ligo_fast.grow(small, large_config, seed=seed)  # every process builds the same operator
    accelerator = Accelerator(kwargs_handlers=[ddp_kwargs(ligo)])
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    opt = torch.optim.AdamW([p for p in ligo.parameters() if p.requires_grad], lr=operator_lr, weight_decay=0.0)
    model, opt, loader = accelerator.prepare(ligo, opt, DataLoader(dataset, batch_size=batch_size))
    ckpt = out / "operator_checkpoint"
    if resume:
        accelerator.load_state(ckpt)  # operator, optimizer, RNG, progress
        logger.info("resumed after operator step %d", progress.step)
    start = progress.step
    batches = iter(accelerator.skip_first_batches(loader, start) if start else loader)

    def step(model, opt, sched=None) -> float:
        (ids,) = next(batches)
        loss = model(input_ids=ids, labels=ids).loss
        accelerator.backward(loss)
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad(set_to_none=True)
        return accelerator.reduce(loss.detach(), "mean").item()

    losses = []
    while progress.step < operator_steps:
        losses.append(step(model, opt))
        progress.step += 1
        if save_every and progress.step % save_every == 0 and progress.step < operator_steps:
            accelerator.save_state(ckpt)
    accelerator.unwrap_model(model).save_pretrained(out / "operator", is_main_process=accelerator.is_main_process)

    big = accelerator.unwrap_model(model).materialize()  # on every process: the operator is the same everywhere
    model, opt = accelerator.free_memory(model, opt)
    opt = torch.optim.AdamW(big.parameters(), lr=lr)
    # not passed to prepare: accelerate's scheduler steps once per process per step (a single-process schedule)
    sched = transformers.get_linear_schedule_with_warmup(opt, warmup, large_steps)
    model, opt = accelerator.prepare(big, opt)
    for _ in range(large_steps):
        losses.append(step(model, opt, sched))
    big = accelerator.unwrap_model(model)
    big.save_pretrained(out / "model", is_main_process=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    return {"losses": losses, "first_step": start, "model": big, "rank": accelerator.process_index}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", help="an HF causal LM directory (default: a tiny random Llama)")
    p.add_argument("--large-config", help="the large model's config.json (default: twice as wide and deep)")
    p.add_argument("--operator-steps", type=int, default=20)
    p.add_argument("--large-steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", type=Path, default=Path("runs/accelerate_grow"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    small, large_cfg = default_models()
    if args.small:
        small = transformers.AutoModelForCausalLM.from_pretrained(args.small)
        large_cfg = type(small.config).from_json_file(args.large_config) if args.large_config else large_cfg
    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch
    n = (args.operator_steps + args.large_steps) * args.batch_size * processes
    data = counting_data(n, args.seq_len, small.config.vocab_size)
    r = grow_and_train(
        small,
        large_cfg,
        data,
        batch_size=args.batch_size,
        operator_steps=args.operator_steps,
        large_steps=args.large_steps,
        save_every=args.save_every,
        resume=args.resume,
        out=args.out,
    )
    if r["rank"] == 0:
        first, grown, last = r["losses"][0], r["losses"][args.operator_steps - 1 - r["first_step"]], r["losses"][-1]
        logger.info("loss %.3f -> %.3f after the operator -> %.3f (saved in %s)", first, grown, last, args.out)


if __name__ == "__main__":
    main()
