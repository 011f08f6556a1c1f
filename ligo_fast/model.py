"""LiGOModel: a large Hugging Face model whose weights are produced by the LiGO operator.

The data flow: :func:`ligo_fast.grow` -> :func:`ligo_fast.plan.build_plan` (which tensors, which slots) ->
``LiGOModel.__init__`` creates the operator's tensors in ``self.op`` (layer-major: small block weights
``(L1, out, in)``, depth coefficients ``(L2, L1)``, per-layer width matrices ``(L2, ...)``) -> every forward
produces the large weights (:mod:`ligo_fast.produce`: one expand call per module kind, one multi-vector call)
and runs the large HF model on them with :func:`torch.func.functional_call` -> ``materialize()`` returns a plain
HF model (filled one module kind at a time, :func:`ligo_fast.hf.fill`), or ``save_materialized()`` streams it to
disk (:mod:`ligo_fast.shards`). The large model's own copies of the produced parameters are deleted, so they cost
no memory.
``state_dict()`` is the official checkpoint layout (:mod:`ligo_fast.layout`), so official operator checkpoints
load strictly and ours load into the official code. Memory-lean and factored execution: :mod:`ligo_fast.lean`,
:mod:`ligo_fast.factored`.

Imports: the layers below (arch, config, init, plan, layout, produce, lean, factored, serialization).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call

from . import backends, factored, hf_surface, operator_io
from .arch import Arch, arch_for
from .config import LiGOConfig
from .hf import empty_model, empty_parameters, fill, materialize_leftovers, meta_shapes, storage_keys, with_layers
from .init import depth_init, is_lossless, width_init
from .layout import check_state_fits, from_official, keys_of
from .lean import chunk_layers, default_chunk, lean_layers
from .memory import MemoryPlan, ensure_fits, estimate, memory_budget
from .plan import ConfigFacts, OpTensor, Plan, Role, Rule, build_plan, check_family
from .produce import parts, produce, produce_part
from .serialization import write_operator
from .shards import DEFAULT_SHARD_SIZE, Entry, write_checkpoint

logger = logging.getLogger(__name__)


class _Op(nn.Module):
    """Holds the operator's tensors by internal name (parameters or buffers)."""

    def put(self, name: str, t: Tensor, trainable: bool) -> None:
        if trainable:
            self.register_parameter(name, nn.Parameter(t))
        else:
            self.register_buffer(name, t)


class _Call(nn.Module):
    """Lets functional_call run a method other than forward (e.g. ``generate``) of the large model."""

    def __init__(self, large: nn.Module, method: str):
        super().__init__()
        self.large = large
        self.method = method

    def forward(self, *args, **kwargs):
        return getattr(self.large, self.method)(*args, **kwargs)


class LiGOModel(nn.Module):
    """A large model grown from a small one by a trainable LiGO operator. Build it with :func:`ligo_fast.grow`.

    It is called exactly like the large HF model (same arguments, same outputs); its trainable parameters are
    the operator's. ``materialize()`` returns a plain HF model with the produced weights.

    Attributes:
        plan: the :class:`ligo_fast.plan.Plan` (slots, operator tensors, widths).
        arch: the architecture description; ``L1``, ``L2``: layer counts; ``hf_class``: the small model's class.
        op: the operator's tensors by internal name; ``large``: the large HF model without the produced parameters.
        preserved_width: the small model's hidden width when the operator starts from the small model's function
            (lossless depth or no new layers, lossless width or no width growth), else None: the argument of
            :func:`ligo_fast.budget.operator_budget` that picks the continued-training learning rate.
    """

    def __init__(self, small_model: nn.Module, large_config, config: LiGOConfig):
        super().__init__()
        arch = arch_for(small_model)
        check_family(arch, large_config)
        arch = arch.for_configs(small_model.config, large_config)
        small_sd = small_model.state_dict()
        _check_finite(small_sd)
        ref = next(small_model.parameters())  # the large model's leftovers follow the small model's device and dtype
        hf_class = type(small_model)
        small_shapes = {k: tuple(v.shape) for k, v in small_sd.items()}
        L1, L2 = arch.num_layers(small_model.config), arch.num_layers(large_config)
        # the memory budget, read once per device (the first here): every memory decision is a function of it
        budget = memory_budget(ref.device, config.memory_budget)
        # before building anything large: do its weights fit at all? (a one-layer model on meta gives the shapes)
        early = _growth_estimate(
            arch, hf_class, small_shapes, L1, large_config, config, elem=ref.element_size(), device=ref.device,
            chunk=1, budget=budget,
        )  # fmt: skip
        ensure_fits(early, f"growing {hf_class.__name__} to {L2} layers")
        with empty_parameters():  # parameters on meta: the produced ones are never allocated
            large = hf_class(large_config)
        plan = build_plan(
            arch, small_shapes, {k: tuple(v.shape) for k, v in large.state_dict().items()}, _tied_groups(large),
            L1, L2, config, (ConfigFacts.of(small_model.config), ConfigFacts.of(large_config)),
        )  # fmt: skip
        if plan.notes:
            logger.warning("this growth's start is not function-preserving: %s", "; ".join(plan.notes))
        self.plan: Plan = plan
        self.arch: Arch = arch
        self.ligo_config = config
        self.hf_class = hf_class
        self.L1, self.L2 = L1, L2
        widens = any(small != large for small, large in plan.widths.values())
        preserving = (L1 == L2 or is_lossless(config.depth_init)) and (not widens or is_lossless(config.width_init))
        self.preserved_width: int | None = getattr(small_model.config, "hidden_size", None) if preserving else None
        self.op = _Op()
        gen = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        for t in plan.tensors:  # in plan order: the order of the initial draws
            self.op.put(t.name, _initial(t, small_sd, config, plan, gen).to(ref.device), t.trainable)
        for name in plan.removed:
            parent, _, leaf = name.rpartition(".")
            del large.get_submodule(parent)._parameters[leaf]
        materialize_leftovers(large, small_sd, ref.device)
        large.to(device=ref.device, dtype=ref.dtype)
        for p in large.parameters():
            p.requires_grad_(False)
        self.large = large
        self._budgets: dict[str, tuple[int, str]] = {str(ref.device): budget}  # device -> (bytes, source)
        self._lean_choice: dict[tuple, tuple[bool, int]] = {}  # (device, tokens, seq_len) -> (lean, chunk)
        self.register_state_dict_post_hook(_state_dict_to_official)
        self.register_load_state_dict_pre_hook(_state_dict_from_official)
        self.__dict__["forward"] = hf_surface.signed_forward(self, large)  # HF-like surface, below

    # ------------------------------------------------------------------ production
    def tensor(self, name: str | None) -> Tensor | None:
        """An operator tensor by internal name (None for None)."""
        return None if name is None else getattr(self.op, name)

    def produce(self, backend: str = "auto") -> dict[str, Tensor]:
        """All produced large-model tensors by HF parameter name (views into one tensor per module kind)."""
        return produce(self.plan.slots, self.tensor, backend=backend, aliases=self.plan.aliases)

    def forward(self, *args, **kwargs):
        slots = self.plan.slots
        chosen = self.factored_plan(args, kwargs)
        forms = {slots[i].name: form for i, form in chosen.items()}
        skip = frozenset(forms)
        with factored.factored_modules(self.large, [slots[i] for i in chosen], self.tensor, self.plan.aliases, forms):
            if not self.lean_now(args, kwargs):
                params = produce(slots, self.tensor, skip_weights=skip, aliases=self.plan.aliases)
                return functional_call(self.large, params, args, kwargs, tie_weights=False)
            glob = produce(
                [s for s in slots if not s.layered], self.tensor, skip_weights=skip, aliases=self.plan.aliases
            )
            layered = [s for s in slots if s.layered]
            blocks = [self.large.get_submodule(self.arch.layer_path(l)) for l in range(self.L2)]
            # per-layer tensors sliced once for the whole forward (one unbind: its backward stacks the layers'
            # gradients once, where slicing per chunk would write a zero gradient of the whole tensor per chunk)
            rows = {t.name: getattr(self.op, t.name).unbind(0) for t in self.plan.tensors if t.rule == Rule.SPLIT}

            def chunk(layers: range) -> dict[str, Tensor]:
                def get(name: str | None) -> Tensor | None:
                    return torch.stack(rows[name][layers.start : layers.stop]) if name in rows else self.tensor(name)

                return produce(layered, get, layers=layers, skip_weights=skip)

            # the pure-PyTorch production saves intermediates for its backward: checkpoint it; the C++/Triton ops
            # save only their inputs (the operator's own tensors)
            checkpointed = backends.resolve("auto", self.device).name == "torch"
            chunks = chunk_layers(self.L2, self.lean_chunk(args, kwargs))
            with lean_layers(self.large, blocks, chunks, chunk, checkpointed):
                return functional_call(self.large, glob, args, kwargs, tie_weights=False)

    def factored_plan(self, args=(), kwargs=None) -> dict[int, str]:
        """``{index into plan.slots: form}`` of the module kinds that run factored in this forward (block linears,
        embeddings and the heads tied to them, other linears outside the blocks; forms: :mod:`ligo_fast.factored`).
        """
        s = self.plan.slots
        T = factored.count_tokens(args, kwargs or {}, self.config)
        nbytes = self.tensor(s[0].w).element_size()
        mode = self.ligo_config.linear_mode
        if self.__dict__.get("_reentrant_checkpointing"):  # its recompute cannot see the factored forwards
            mode = "materialize"
        aliases = self.plan.aliases
        half = not self.lean_now(args, kwargs or {})  # lean keeps no layer's (partly) produced weight alive
        return factored.choose(mode, s, self.L1, T, nbytes, self.device, aliases, self._factorable, half)

    def linear_step_flops(self, *args, **kwargs) -> int:
        """FLOPs of one operator training step (forward + backward) of the large model's linear layers and
        embeddings on this batch (the arguments of a forward call), each in the form this forward runs it
        (:meth:`factored_plan`): factored, or produced and then run (:func:`ligo_fast.factored.step_flops`). A
        factored layer costs less than the plain large layer. Not counted: attention scores, norms, biases and the
        elementwise work, which growth does not change (add them as for a plain step)."""
        forms = self.factored_plan(args, kwargs)
        T = factored.count_tokens(args, kwargs, self.config)
        return factored.step_flops(self.plan.slots, self.L1, T, forms, self.plan.aliases)

    def _factorable(self, slot) -> bool:
        scaled = slot.mod.output_scale is not None
        paths = factored.paths(slot, self.plan.aliases)
        return all(factored.module_ok(self.large.get_submodule(p), scaled) for p in paths)

    def memory_plan(self, *args, **kwargs) -> MemoryPlan:
        """The memory estimate of an operator-training step on this batch (the arguments of a forward call).

        ``print(model.memory_plan(input_ids=batch))`` shows the estimate, the memory budget and the choice between
        the eager and the memory-lean path (:mod:`ligo_fast.memory`).
        """
        return self._memory_plan(*_batch_key(args, kwargs, self.config))

    @property
    def memory_budget(self) -> int:
        """Bytes the memory decisions on this model's device plan with (:func:`ligo_fast.memory.memory_budget`):
        ``LiGOConfig.memory_budget``, ``LIGO_FAST_MEMORY_BUDGET`` or the memory free when the model was built (or
        first used on this device), read once and kept."""
        return self._budget()[0]

    def _budget(self) -> tuple[int, str]:
        dev = self.device
        budgets = self.__dict__.setdefault("_budgets", {})  # a model pickled by an older version has none
        if str(dev) not in budgets:  # moved to another device: its memory, read once
            budgets[str(dev)] = memory_budget(dev, getattr(self.ligo_config, "memory_budget", None))
            logger.info("memory budget on %s: %d bytes (%s)", dev, *budgets[str(dev)])
        return budgets[str(dev)]

    def _memory_plan(self, tokens: int, seq_len: int) -> MemoryPlan:
        leftovers = sum(t.numel() * t.element_size() for t in self.large.state_dict().values())
        elem = self.tensor(self.plan.slots[0].w).element_size()
        budget, source = self._budget()
        mp = estimate(
            self.plan, self.config, tokens=tokens, seq_len=seq_len, elem=elem, leftover_bytes=leftovers,
            device=self.device, chunk=default_chunk(self.L2), available=budget, source=source,
        )  # fmt: skip
        while mp.use_lean and not mp.fits and mp.chunk > 1:  # smaller chunks until the lean step fits
            mp = dataclasses.replace(mp, chunk=mp.chunk // 2)
        return mp

    def lean_chunk(self, args=(), kwargs=None) -> int:
        """Layers per chunk of memory-lean mode for this batch: about sqrt(L2), fewer if memory is short."""
        return self._decide(*_batch_key(args, kwargs or {}, self.config))[1]

    def lean_now(self, args=(), kwargs=None) -> bool:
        """Whether a forward on this batch uses memory-lean expansion (``LiGOConfig.lean``; None = auto).

        Auto: on while gradients are recorded and the eager step would not fit in the memory budget
        (:attr:`memory_budget`, read once; :meth:`memory_plan`): a function of the batch shape and that number,
        so a run does not switch paths as the machine's free memory changes.
        """
        lean = self.ligo_config.lean
        if lean is not None:
            return bool(lean)
        if not torch.is_grad_enabled():
            return False
        return self._decide(*_batch_key(args, kwargs or {}, self.config))[0]

    @torch.compiler.assume_constant_result
    def _decide(self, tokens: int, seq_len: int) -> tuple[bool, int]:
        """(lean on, layers per chunk) for a batch shape, decided once (under torch.compile: at trace time, outside
        the graph, since it reads the memory budget, on a model's first use of a device)."""
        key = (str(self.device), tokens, seq_len)
        if key not in self._lean_choice:
            mp = self._memory_plan(tokens, seq_len)
            self._lean_choice[key] = (mp.use_lean, mp.chunk)
            if mp.use_lean:
                logger.info("memory-lean mode on: %s", mp)
        return self._lean_choice[key]

    # ------------------------------------------------------------------ HF-like surface
    # What HF tooling (Trainer, accelerate, PEFT-style inspection) reads from a model. ``forward`` in the instance's
    # __dict__ (set at the end of __init__) carries the large model's signature and calls the class's forward.
    _keys_to_ignore_on_save = None  # Trainer reads it when a checkpoint misses keys

    @property
    def config(self):
        return self.large.config

    @property
    def device(self) -> torch.device:
        return self.tensor(self.plan.slots[0].w).device

    @property
    def main_input_name(self) -> str:
        return getattr(self.large, "main_input_name", "input_ids")

    @property
    def supports_gradient_checkpointing(self) -> bool:
        return bool(getattr(self.large, "supports_gradient_checkpointing", False))

    def can_generate(self) -> bool:
        """Whether ``generate`` works: the large HF model's answer."""
        can = getattr(self.large, "can_generate", None)
        return bool(can()) if can is not None else False

    def generate(self, *args, **kwargs):
        """``generate`` of the large HF model, with the produced weights (only where the HF class has it)."""
        if not hasattr(self.large, "generate"):
            raise AttributeError(f"{type(self.large).__name__} has no generate()")
        with torch.no_grad():
            # as Parameters, so HF's generate finds a device and dtype through model.parameters()
            params = {"large." + k: nn.Parameter(v, requires_grad=False) for k, v in self.produce().items()}
        return functional_call(_Call(self.large, "generate"), params, args, kwargs, tie_weights=False)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """HF's ``num_parameters``: the large model's count (as ``materialize().num_parameters(...)`` would say, no
        weights produced), or with ``only_trainable`` the operator's trainable values (what the optimizer updates;
        ``exclude_embeddings`` does not apply to those)."""
        if only_trainable:
            return sum(p.numel() for p in self.parameters() if p.requires_grad)
        counts = self.__dict__.setdefault("_hf_counts", {})  # plain ints; the large shapes never change
        if exclude_embeddings not in counts:
            twin = hf_surface.meta_twin(self.hf_class, self.config)
            counts[exclude_embeddings] = twin.num_parameters(exclude_embeddings=exclude_embeddings)
        return counts[exclude_embeddings]

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs) -> None:
        """Activation checkpointing of the large model's blocks (HF's ``activation_checkpointing_enable``, same
        arguments); the recompute in backward runs on the weights the forward produced (same loss and gradients).
        Reentrant checkpointing (``use_reentrant=True``) cannot recompute factored layers: with it, ``auto`` runs
        every layer materialised and ``factored`` is refused."""
        reentrant = (activation_checkpointing_kwargs or {}).get("use_reentrant", False)
        if reentrant and self.ligo_config.linear_mode == "factored":
            raise ValueError(
                "reentrant activation checkpointing cannot recompute linear_mode='factored' layers; use "
                "use_reentrant=False (HF's default) or linear_mode='materialize' or 'auto'"
            )
        self.__dict__["_reentrant_checkpointing"] = bool(reentrant)
        enable = getattr(self.large, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs)
        else:  # transformers before the rename
            self.large.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs)
        leaves = hf_surface.produced_leaves(self.large, self.plan.removed)
        for m in self.large.modules():
            fn = m.__dict__.get("_gradient_checkpointing_func")
            if fn is not None:
                fn = getattr(fn, "ligo_wrapped", fn)
                m._gradient_checkpointing_func = hf_surface.recompute_with_installed(m, fn, leaves)

    def activation_checkpointing_disable(self) -> None:
        self.__dict__["_reentrant_checkpointing"] = False
        disable = getattr(self.large, "activation_checkpointing_disable", None)
        (disable or self.large.gradient_checkpointing_disable)()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs) -> None:
        """The older name of :meth:`activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.large.modules())

    is_gradient_checkpointing = is_activation_checkpointing

    def save_pretrained(self, save_directory, state_dict=None, is_main_process: bool = True, **kwargs) -> None:
        """HF-style save of the operator: ``operator.safetensors`` (official layout) and ``ligo_config.json``, as
        :meth:`save_operator`; ``state_dict`` replaces ``self.state_dict()`` (e.g. one gathered from shards). Load with
        :func:`ligo_fast.load_operator` or :func:`ligo_fast.integrations.from_pretrained`. HF's other keyword
        arguments (``safe_serialization``, ``max_shard_size``, ...) are accepted and ignored."""
        if is_main_process:
            state = self.state_dict() if state_dict is None else state_dict
            write_operator(save_directory, state, self.operator_meta())

    def __repr__(self) -> str:
        # the large model's modules print their weights' shapes (RMSNorm's extra_repr reads .weight): meta stand-ins
        with hf_surface.placeholders(self.large, hf_surface.meta_twin(self.hf_class, self.config), self.plan.removed):
            return super().__repr__()

    def __setstate__(self, state) -> None:
        super().__setstate__(state)  # unpickling binds the class's forward: give it the large signature again
        self.__dict__["forward"] = hf_surface.signed_forward(self, self.large)

    @torch.no_grad()
    def materialize(self, dtype: torch.dtype | None = None) -> nn.Module:
        """A fresh plain HF model of the large config holding the produced weights (no references to this model).

        The large model is built with its parameters on meta and each module kind's weights are produced (a chunk
        of about sqrt(L2) large layers per call, the forward's op calls over fewer layers: the same values) and
        assigned, one after the other: no random init is thrown away and no second copy of the state is made, so
        the peak is about the large model plus one chunk.

        Args:
            dtype: the floating dtype of the result's parameters and buffers (as ``model.to(dtype)`` would give);
                None: the operator's. The values are those the forward uses, cast once.

        Returns:
            A model of the small model's class, on this model's device and in its train/eval mode, ready for
            ``save_pretrained`` (or save without building it: :meth:`save_materialized`).
        """
        dtype = dtype or self.tensor(self.plan.slots[0].w).dtype
        # parameters() and buffers(), not state_dict(): FSDP2's state-dict hooks would swap in the sharded tensors
        mine = [*self.op.parameters(), *self.op.buffers(), *self.large.parameters(), *self.large.buffers()]
        avoid = storage_keys(mine)
        large = fill(empty_model(self.hf_class, self.config), self._state_parts(), device=self.device, dtype=dtype,
                     avoid=avoid)  # fmt: skip
        return large.train(self.training)

    @torch.no_grad()
    def save_materialized(
        self, save_directory, dtype: torch.dtype | None = None, max_shard_size: int | str = DEFAULT_SHARD_SIZE
    ) -> list[str]:
        """Write what ``materialize(dtype).save_pretrained(save_directory)`` would, without building the large model.

        One module kind is produced at a time, a chunk of about sqrt(L2) large layers (or, for a vocabulary matrix,
        a block of rows) per call, cast to ``dtype`` and appended to its safetensors shard, then dropped: the peak
        is about one such chunk, not the model. The
        directory gets ``config.json``, ``generation_config.json`` (models that generate), and ``model.safetensors``
        or shards of at most ``max_shard_size`` with ``model.safetensors.index.json``, as transformers names them;
        tied weights are written once. It loads with ``AutoModel*.from_pretrained`` and equals
        ``materialize(dtype)`` bit for bit. Crash-safe: written into a temporary directory, fsynced and renamed,
        the index (or the single weights file) last (:mod:`ligo_fast.shards`).

        Returns:
            The names of the files written.
        """
        entries, extra, total = self._checkpoint_layout(dtype)
        return write_checkpoint(
            save_directory, entries, self._state_parts(row_blocks=True), max_shard_size=max_shard_size, extra=extra,
            total_parameters=total,
        )  # fmt: skip

    def _checkpoint_layout(self, dtype: torch.dtype | None) -> tuple[list[Entry], Callable[[Path], None], int]:
        """What :meth:`save_materialized` writes, before any value exists: the entries (name, shape, dtype: the
        produced names part by part, then the leftovers; tied names once, the first, as ``save_pretrained``), the
        writer of ``config.json`` and ``generation_config.json``, and the parameter count for the index."""
        dtype = dtype or self.tensor(self.plan.slots[0].w).dtype
        meta = empty_model(self.hf_class, self.config)
        state = meta.state_dict(keep_vars=True)
        canonical, seen = {}, set()  # tied names: the first one only, as save_pretrained writes them
        for k, v in state.items():
            if id(v) not in seen:
                seen.add(id(v))
                canonical[k] = v
        # the produced names, then the leftovers (the last part of _state_parts), in the meta model's order; a name
        # that no part holds fails the writer before anything is moved into place
        order = [*(n for part in parts(self.plan.slots, self.plan.aliases) for n in part.names), *canonical]
        entries = [
            Entry(n, tuple(canonical[n].shape), dtype if canonical[n].is_floating_point() else canonical[n].dtype)
            for n in dict.fromkeys(order)
            if n in canonical
        ]
        config = meta.config
        config.dtype = str(dtype).split(".")[1]
        config.architectures = [self.hf_class.__name__]
        generation = meta.generation_config if meta.can_generate() else None

        def extra(d: Path) -> None:
            config.save_pretrained(d)
            if generation is not None:
                generation.save_pretrained(d)

        return entries, extra, meta.num_parameters()

    def _state_parts(
        self, row_blocks: bool = False, *, share: range | None = None, get=None, mine=None, leftovers=None,
        ranks: int = 1,
    ) -> Iterator[dict[str, Tensor]]:  # fmt: skip
        """The large model's state by name, in parts: the vectors, then each module kind with a weight matrix (a
        per-layer kind in chunks of :func:`ligo_fast.lean.default_chunk` layers, as lean mode chunks them, so
        about a square root of the layers' share of it is alive at a time), then the leftovers. The same op calls
        as the forward's production, over fewer layers: each layer's values are the forward's bit for bit.

        ``row_blocks`` (the streamed save, whose writer takes a tensor in consecutive row blocks): a global matrix
        whose rows the operator does not widen (a vocabulary embedding or head) comes as many blocks of rows as a
        per-layer kind has chunks, each the same op call over fewer rows.

        One rank's share of a sharded save (:func:`ligo_fast.distributed.save_materialized_distributed`): the large
        layers ``share`` of every per-layer kind and of the vectors, ``get`` giving the operator's tensors (the
        per-layer ones as the rows of those layers), the global matrices whose part ``mine(part)`` holds, and
        ``leftovers`` (None: none) in place of the large model's own; with ``ranks`` sharing the work, each call
        covers 1/ranks of one process's layers or rows.
        """
        single = share is None
        share = range(self.L2) if single else share
        get = get or self.tensor
        split = {t.name for t in self.plan.tensors if t.rule == Rule.SPLIT}
        # a rank's share: calls 1/ranks the size of one process's (its share of the memory as of the work)
        chunks = chunk_layers(self.L2, -(-default_chunk(self.L2) // ranks))
        blocks = len(chunk_layers(self.L2, default_chunk(self.L2))) * ranks
        for part in parts(self.plan.slots, self.plan.aliases):
            slot = part.slots[0]
            if part.vectors:
                yield produce(part.slots, get, layers=None if single else share, aliases=self.plan.aliases,
                              matrices=False)  # fmt: skip
            elif slot.layered:
                for layers in chunks:
                    layers = range(max(layers.start, share.start), min(layers.stop, share.stop))
                    if len(layers):
                        local = range(layers.start - share.start, layers.stop - share.start)
                        yield produce(part.slots, _layer_rows(get, split, local), layers=layers,
                                      aliases=self.plan.aliases, vectors=False)  # fmt: skip
            elif mine is not None and not mine(part):
                continue
            elif row_blocks and _rows_separable(slot):
                n = slot.shape_w[0]
                for block in chunk_layers(n, -(-n // blocks)):
                    yield produce([_row_block(slot, block)], _row_rows(get, slot.w, block),
                                  aliases=self.plan.aliases, vectors=False)  # fmt: skip
            else:
                yield produce_part(part, get, aliases=self.plan.aliases)
        if single or leftovers is not None:
            yield self.large.state_dict() if single else leftovers

    def operator_meta(self) -> dict:
        """What ``ligo_config.json`` records: the options, the small model's class, the large config."""
        return operator_io.operator_meta(self)

    def save_operator(self, path) -> None:
        """Save the operator (safetensors, official layout) and a JSON of its configuration into directory ``path``,
        streamed one tensor at a time (:func:`ligo_fast.operator_io.save`)."""
        operator_io.save(self, path)

    def official_state(self, internal: dict[str, Tensor], prefix: str = "") -> OrderedDict:
        """The official layout of ``internal``: this model's entries as ``nn.Module.state_dict`` collects them
        (``<prefix>op.*``, ``<prefix>large.*``); FSDP2 DTensors along a layer axis are gathered (collective)."""
        return operator_io.official_state(self, internal, prefix)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        check_state_fits({k: tuple(v.shape) for k, v in self.state_dict().items()}, state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        return f"{self.arch.family}: {self.L1} -> {self.L2} layers, {len(self.plan.slots)} module kinds"


def plan_growth(
    small_model: nn.Module,
    large_config,
    config: LiGOConfig | None = None,
    *,
    tokens: int = 0,
    seq_len: int = 0,
    device: torch.device | str = "cpu",
    chunk: int | None = None,
    budget: tuple[int, str] | None = None,
) -> MemoryPlan:
    """The memory estimate of growing ``small_model`` to ``large_config`` without building either model's weights.

    Only shapes are read: ``small_model`` may live on meta (``with torch.device("meta"): cls(small_config)``), and
    the large shapes come from a one-layer model on meta, so an 8B-class growth is planned in well under a second.
    The plan's tied weights are not known here (a tied head counts as its own weight: an upper bound).

    Args:
        tokens, seq_len: the batch of the operator step (0: no step, the other parts only).
        device: whose memory budget :class:`MemoryPlan` compares with; ``chunk``: lean mode's layers per chunk
            (None: about sqrt(L2)).
        budget: (bytes, source) to compare with; None: :func:`ligo_fast.memory.memory_budget` of ``device`` now
            (``config.memory_budget``, else ``LIGO_FAST_MEMORY_BUDGET``, else the free memory).
    """
    config = config or LiGOConfig()
    arch = arch_for(small_model)
    check_family(arch, large_config)
    arch = arch.for_configs(small_model.config, large_config)
    small_shapes = {k: tuple(v.shape) for k, v in small_model.state_dict().items()}
    device = torch.device(device)
    budget = budget if budget is not None else memory_budget(device, config.memory_budget)
    elem = next(small_model.parameters()).element_size()
    return _growth_estimate(
        arch, type(small_model), small_shapes, arch.num_layers(small_model.config), large_config, config,
        elem=elem, device=device, chunk=chunk, budget=budget, tokens=tokens, seq_len=seq_len,
    )  # fmt: skip


def _growth_estimate(
    arch: Arch, hf_class: type, small_shapes: dict, L1: int, large_config, config: LiGOConfig, *, elem: int,
    device: torch.device, chunk: int | None, budget: tuple[int, str], tokens: int = 0, seq_len: int = 0,
) -> MemoryPlan:  # fmt: skip
    """:func:`plan_growth` from what the caller already has (the family resolved for both configs, the small
    shapes and layer count): also :class:`LiGOModel`'s early refusal, which has them (no second pass over the
    small model's state)."""
    L2 = arch.num_layers(large_config)
    large_shapes = _shapes_for_layers(hf_class, large_config, arch, L2)
    plan = build_plan(arch, small_shapes, large_shapes, [], L1, L2, config)
    available, source = budget
    return estimate(
        plan, large_config, tokens=tokens, seq_len=seq_len, elem=elem, leftover_bytes=0, device=device,
        chunk=default_chunk(L2) if chunk is None else chunk, available=available, source=source,
    )  # fmt: skip


# ---------------------------------------------------------------------- helpers
def _batch_key(args, kwargs, config) -> tuple[int, int]:
    """(tokens, sequence length) of a batch: what the memory decisions depend on."""
    tokens = factored.count_tokens(args, kwargs, config)
    return tokens, _seq_len(args, kwargs, tokens)


def _seq_len(args, kwargs, tokens: int) -> int:
    """The sequence length of a batch (the last dim of input_ids / the middle of inputs_embeds), else ``tokens``."""
    ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], Tensor) else None)
    if ids is not None and ids.dim() >= 1:
        return ids.shape[-1]
    emb = kwargs.get("inputs_embeds")
    if emb is not None and emb.dim() >= 2:
        return emb.shape[-2]
    return tokens


def _shapes_for_layers(hf_class: type, config, arch: Arch, layers: int) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of ``hf_class(config)`` with ``layers`` blocks, from a one-block model on meta."""
    one = meta_shapes(hf_class, with_layers(config, 1))
    block = arch.layer_path(0) + "."
    shapes = {k: v for k, v in one.items() if not k.startswith(block)}
    for k, v in one.items():
        if k.startswith(block):
            for l in range(layers):
                shapes[arch.layer_path(l) + "." + k[len(block) :]] = v
    return shapes


def _tied_groups(large: nn.Module) -> list[tuple[str, ...]]:
    """The large model's parameter names grouped by identity (ties share one group)."""
    by_id: dict[int, list[str]] = {}
    for name, p in large.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [tuple(v) for v in by_id.values()]


def _layer_rows(get, rows: set[str], layers: range):
    """``get`` for producing ``layers`` only: the per-layer operator tensors (``rows``) sliced to those layers."""

    def sliced(name: str | None) -> Tensor | None:
        t = get(name)
        return t[layers.start : layers.stop] if name in rows else t

    return sliced


def _rows_separable(s) -> bool:
    """Whether global slot ``s``'s weight is produced row by row: its rows are not widened (no ``E_out``), it is
    not fused from parts, has no residual, and its 2-D view's rows are the tensor's first dim."""
    return (
        not s.layered and s.e_rows == (None,) and len(s.e_cols) == 1 and s.res_w is None and not s.split_rows
        and len(s.shape_w) == 2 and s.view_w[0] == s.shape_w[0]
    )  # fmt: skip


def _row_block(s, block: range):
    """Slot ``s`` restricted to the rows ``block`` of its weight (:func:`_rows_separable` slots)."""
    n = len(block)
    return dataclasses.replace(s, shape_w=(n, *s.shape_w[1:]), view_w=(n, *s.view_w[1:]))


def _row_rows(get, w: str, block: range):
    """``get`` with the small weight ``w`` cut to the rows ``block``."""

    def sliced(name: str | None) -> Tensor | None:
        t = get(name)
        return t[block.start : block.stop] if name == w else t

    return sliced


def _initial(t: OpTensor, small_sd: dict[str, Tensor], cfg: LiGOConfig, plan: Plan, gen) -> Tensor:
    """The initial value of operator tensor ``t`` (draws from ``gen`` for the random ones)."""
    if t.role == Role.SMALL:
        if t.rule == Rule.STACK:
            return torch.stack([small_sd[k].detach() for k in t.sources]).contiguous()
        return small_sd[t.sources[0]].detach().clone()
    if t.role == Role.WIDTH:
        n_new, small = t.shape[-2:]
        if t.rule == Rule.SPLIT:  # one layer's draw at a time into the result: no list of draws beside it
            out = None
            for l in range(t.shape[0]):
                draw = width_init(n_new, small, cfg.width_init, cfg.width_noise, gen)
                out = torch.empty((t.shape[0], *draw.shape), dtype=draw.dtype) if out is None else out
                out[l] = draw
            return out
        return width_init(n_new, small, cfg.width_init, cfg.width_noise, gen)
    if t.role == Role.DEPTH:
        d = depth_init(plan.L2, plan.L1, cfg.depth_init, cfg.depth_noise, gen, block_output=t.block_output)
        return d if t.scale == 1.0 else d * t.scale
    if t.role == Role.SCALE:
        return torch.full(t.shape, t.scale)
    if is_lossless(cfg.depth_init) or is_lossless(cfg.width_init):
        return torch.zeros(t.shape)  # a function-preserving start has no residual
    return torch.empty(t.shape).uniform_(-cfg.residual_noise, cfg.residual_noise, generator=gen)


def _check_finite(sd: dict[str, Tensor]) -> None:
    for k, v in sd.items():
        # a sum is one pass without a mask the size of the tensor; a NaN or Inf always makes it non-finite, and an
        # overflowing sum of finite values is told apart by the full check
        if v.is_floating_point() and not torch.isfinite(v.sum()) and not torch.isfinite(v).all():
            kind = "NaN" if torch.isnan(v).any() else "Inf"
            raise ValueError(f"the small model's {k} contains {kind}; refusing to grow from it")


def _state_dict_to_official(module: LiGOModel, sd, prefix, local_metadata) -> None:
    mine = OrderedDict((k, sd.pop(k)) for k in [k for k in sd if k.startswith(prefix)])
    sd.update(module.official_state(mine, prefix))


def _state_dict_from_official(module: LiGOModel, sd, prefix, *args) -> None:
    rules, L2 = module.plan.rules, module.L2
    internal = from_official(rules, {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}, L2)
    for name, official, rule in rules:
        if name in internal:
            for k in keys_of(official, rule, L2):
                del sd[prefix + k]
            sd[prefix + "op." + name] = internal[name]
    for k in module.large.state_dict():
        if prefix + k in sd:
            sd[prefix + "large." + k] = sd.pop(prefix + k)
