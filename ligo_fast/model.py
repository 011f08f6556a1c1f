"""LiGOModel: a large Hugging Face model whose weights are produced by the LiGO operator.

The data flow: :func:`ligo_fast.grow` -> :class:`ligo_fast.spec.GrowthSpec` (the plan of which tensors feed which
slots, the large model without its produced weights, the initial tensors; prepared once) -> ``LiGOModel.__init__``
registers the operator's tensors in ``self.op`` (layer-major: small block weights ``(L1, out, in)``, depth
coefficients ``(L2, L1)``, per-layer width matrices ``(L2, ...)``) -> every forward
produces the large weights (:mod:`ligo_fast.produce`: one expand call per module kind, one multi-vector call)
and runs the large HF model on them, as its execution plan says (:mod:`ligo_fast.execution`: decide, bind, run)
-> ``materialize()`` returns a plain HF model (filled one module kind at a time, :func:`ligo_fast.hf.fill`), or
``save_materialized()`` streams it to disk (:mod:`ligo_fast.shards`). The large model's own copies of the produced
parameters are deleted, so they cost no memory.
``state_dict()`` is the official checkpoint layout (:mod:`ligo_fast.layout`), so official operator checkpoints
load strictly and ours load into the official code. Memory-lean and factored execution: :mod:`ligo_fast.lean`,
:mod:`ligo_fast.factored`.

Imports: the layers below (arch, config, plan, layout, produce, execution, binding, factored, memory,
serialization, shards) and spec (the prepared growth) and hf_surface on its own floor.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from . import factored, hf_surface, operator_io
from .arch import Arch
from .binding import Binding
from .config import ExecutionOptions, LiGOConfig
from .execution import BatchShape, ExecutionPlan, Target, batch_shape, bind, budget_for, decide
from .hf import empty_model, materialized, storage_keys
from .layout import check_state_fits, from_official, keys_of
from .memory import MemoryPlan
from .plan import Plan, Rule
from .produce import parts, produce, produce_parts
from .rows import LayerRow, LayerRows, row_attr
from .serialization import write_operator
from .shards import DEFAULT_SHARD_SIZE, Entry, write_checkpoint
from .spec import GrowthSpec, widens

logger = logging.getLogger(__name__)


class _Op(nn.Module):
    """Holds the operator's tensors by internal name (parameters or buffers)."""

    def put(self, name: str, t: Tensor, trainable: bool) -> None:
        if trainable:
            self.register_parameter(name, nn.Parameter(t))
        else:
            self.register_buffer(name, t)


class LiGOModel(hf_surface.HFSurface, nn.Module):
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
        widens: whether the growth makes any width larger; False for depth-only growth, where the budget rule trains
            no operator from a function-preserving start (:func:`ligo_fast.budget.operator_budget`).
    """

    def __init__(self, small_model: nn.Module, large_config, config: LiGOConfig, *, draw: bool = True):
        super().__init__()
        # the steps: ligo_fast.spec; draw=False: the operator's tensors uninitialised, for a loader that fills them all
        spec = GrowthSpec.prepare(small_model, large_config, config, draw=draw)
        if spec.plan.notes:
            logger.warning("this growth's start is not function-preserving: %s", "; ".join(spec.plan.notes))
        self.plan: Plan = spec.plan
        self.arch: Arch = spec.pair.arch
        self.ligo_config = config
        self.hf_class = spec.pair.hf_class
        self.L1, self.L2 = spec.pair.L1, spec.pair.L2
        self.preserved_width: int | None = spec.preserved_width
        self.widens: bool = widens(spec.plan)
        self.op = _Op()
        for t in spec.plan.tensors:
            self.op.put(t.name, spec.initial[t.name], t.trainable)
        self.large = spec.large
        self._budgets: dict[str, tuple[int, str]] = {str(self.device): spec.budget}  # device -> (bytes, source)
        self._plans: dict[tuple, ExecutionPlan] = {}  # (device, batch shape, options) -> how it runs
        self.register_state_dict_post_hook(_state_dict_to_official)
        self.register_load_state_dict_pre_hook(_state_dict_from_official)
        self._install_signature()  # HF-like surface, below

    # ------------------------------------------------------------------ production
    def tensor(self, name: str | None) -> Tensor | None:
        """An operator tensor by internal name (None for None); one held per layer (:meth:`hold_per_layer`) is its
        rows stacked (a new tensor: read it where they are gathered)."""
        if name is None:
            return None
        held = self.rows(name)
        return getattr(self.op, name) if held is None else torch.stack([row() for row in held])

    def rows(self, name: str | None) -> list[LayerRow] | None:
        """The deferred rows of an operator tensor held per layer (:meth:`hold_per_layer`), else None."""
        home = self.__dict__.get("_row_home")
        if not home or name not in home:
            return None
        return [LayerRow(self.op_rows[i], a) for i, a in home[name]]

    @property
    def held_per_layer(self) -> bool:
        """Whether the per-layer operator matrices are held one parameter per large layer (:meth:`hold_per_layer`)."""
        return bool(self.__dict__.get("_row_home"))

    @torch.no_grad()
    def hold_per_layer(self, chunks: Sequence[range]) -> list[LayerRows]:
        """Move every trainable per-layer operator matrix (rule ``split`` with matrix rows: the per-layer width
        matrices, residuals; the depth rows stay) out of ``op`` into one parameter per large layer, on one
        :class:`ligo_fast.rows.LayerRows` per chunk of consecutive layers (``op_rows``), for FSDP2 units per block
        (:func:`ligo_fast.distributed.shard` with ``per_block=True``). The forward then needs memory-lean mode with
        these chunks; ``state_dict()`` stacks the rows again (same keys and values); ``load_state_dict`` and
        ``save_operator`` refuse (load before, save with ``save_operator_distributed``). Returns the holders."""
        if self.held_per_layer:
            raise RuntimeError("hold_per_layer: the operator is held per layer already")
        if [l for c in chunks for l in c] != list(range(self.L2)):
            raise ValueError(f"hold_per_layer: chunks {list(chunks)} do not cover layers 0-{self.L2 - 1} in order")
        names = [
            t.name for t in self.plan.tensors
            if t.rule == Rule.SPLIT and t.name in self.op._parameters and self.op._parameters[t.name].dim() >= 3
        ]  # fmt: skip
        holders = nn.ModuleList(LayerRows(c) for c in chunks)
        home: dict[str, list[tuple[int, str]]] = {}
        for name in names:
            t = self.op._parameters.pop(name)
            home[name] = []
            for i, c in enumerate(chunks):
                for l in c:
                    holders[i].register_parameter(row_attr(name, l), nn.Parameter(t[l].clone(), t.requires_grad))
                    home[name].append((i, row_attr(name, l)))
            del t
        self.op_rows = holders
        self.__dict__["_row_home"] = home
        return list(holders)

    def produce(self, backend: str = "auto") -> dict[str, Tensor]:
        """All produced large-model tensors by HF parameter name (views into one tensor per module kind)."""
        return produce(self.plan.slots, self.tensor, backend=backend, aliases=self.plan.aliases)

    def forward(self, *args, **kwargs):
        """Decide (:meth:`execution_plan`), bind (:func:`ligo_fast.execution.bind`), run the large model."""
        plan = self.execution_plan(args, kwargs)
        rows = None
        if self.held_per_layer:  # units per chunk of blocks (distributed.shard(per_block=True))
            if not plan.lean:
                raise ValueError(
                    "this model's operator is held per layer (distributed.shard(per_block=True)): it runs only in "
                    "memory-lean mode; set model.execution_options = ExecutionOptions(lean=True)"
                )
            rows = self.rows
        blocks = [self.large.get_submodule(self.arch.layer_path(l)) for l in range(self.L2)] if plan.lean else []
        with bind(self.large, self.plan, self.tensor, plan, blocks, rows):
            return self.large(*args, **kwargs)

    def execution_plan(self, args=(), kwargs=None) -> ExecutionPlan:
        """How a forward on this batch (the arguments of a forward call) runs: the forms of the grown linears,
        memory-lean mode and its chunk, the memory estimate (:mod:`ligo_fast.execution`), decided once per batch
        shape (and per gradient mode, device, dtype and options: :attr:`execution_options`). With the operator held
        per layer (:meth:`hold_per_layer`) lean mode's chunk is the holders'."""
        tokens, seq_len = batch_shape(args, kwargs or {}, self.config)
        reentrant = bool(self.__dict__.get("_reentrant_checkpointing"))
        key = self._decide(tokens, seq_len, torch.is_grad_enabled(), reentrant, torch.compiler.is_compiling())
        plan = self._plans[key]
        if self.held_per_layer and plan.lean:  # lean mode's chunks are the holders' (the FSDP2 units')
            plan = dataclasses.replace(plan, chunk=len(self.op_rows[0].layers))
        return plan

    @torch.compiler.assume_constant_result
    def _decide(self, tokens: int, seq_len: int, grad: bool, reentrant: bool, compiling: bool) -> tuple:
        """The key of this batch shape's plan in ``_plans``, computed once (under torch.compile: at trace time,
        outside the graph, since it may read the memory budget and load the backend)."""
        batch = BatchShape(tokens, seq_len, grad, reentrant, compiling)
        options = self.execution_options
        plans = self.__dict__.setdefault("_plans", {})  # a model pickled by an older version has none
        return decide(plans, batch, options, self.tensor(self.plan.slots[0].w), lambda: self._target(options))

    @property
    def execution_options(self) -> ExecutionOptions:
        """How forwards run (:class:`ligo_fast.ExecutionOptions`): those set here, else the ones ``LiGOConfig``
        was given (``lean``, ``linear_mode``, ``memory_budget``). Set it to run a loaded operator, whose file records
        only the structure, in other ways (``model.execution_options = ExecutionOptions(lean=True)``)."""
        return self.__dict__.get("_execution_options") or self.ligo_config.execution

    @execution_options.setter
    def execution_options(self, options: ExecutionOptions) -> None:
        if not isinstance(options, ExecutionOptions):
            raise TypeError(f"execution_options must be an ExecutionOptions, got {type(options).__name__}")
        self.__dict__["_execution_options"] = options

    def _target(self, options: ExecutionOptions) -> Target:
        """What the plans of this model on its device are computed from (:class:`ligo_fast.execution.Target`)."""
        leftovers = sum(t.numel() * t.element_size() for t in self.large.state_dict().values())
        like = self.tensor(self.plan.slots[0].w)
        return Target.of(self.plan, self.config, like, self._budget(), options, self._factorable, leftovers)

    def factored_plan(self, args=(), kwargs=None) -> dict[int, str]:
        """``{index into plan.slots: form}`` of the module kinds that run factored in this forward (block linears,
        embeddings and the heads tied to them, other linears outside the blocks; forms: :mod:`ligo_fast.factored`):
        :meth:`execution_plan`'s."""
        return dict(self.execution_plan(args, kwargs).forms)

    def linear_step_flops(self, *args, **kwargs) -> int:
        """FLOPs of one operator training step (forward + backward) of the large model's linear layers and
        embeddings on this batch (the arguments of a forward call), each in the form this forward runs it
        (:meth:`factored_plan`): factored, or produced and then run (:func:`ligo_fast.factored.step_flops`). A
        factored layer costs less than the plain large layer. Not counted: attention scores, norms, biases and the
        elementwise work, which growth does not change (add them as for a plain step)."""
        plan = self.execution_plan(args, kwargs)
        return factored.step_flops(self.plan.slots, self.L1, plan.tokens, plan.forms, self.plan.aliases)

    def _factorable(self, slot) -> bool:
        scaled = slot.mod.output_scale is not None
        paths = factored.paths(slot, self.plan.aliases)
        return all(factored.module_ok(self.large.get_submodule(p), scaled) for p in paths)

    def memory_plan(self, *args, **kwargs) -> MemoryPlan:
        """The memory estimate of an operator-training step on this batch (the arguments of a forward call), in the
        forms it runs (:meth:`execution_plan`'s).

        ``print(model.memory_plan(input_ids=batch))`` shows the estimate, the memory budget and the choice between
        the eager and the memory-lean path (:mod:`ligo_fast.memory`).
        """
        return self.execution_plan(args, kwargs).memory

    @property
    def memory_budget(self) -> int:
        """Bytes the memory decisions on this model's device plan with (:func:`ligo_fast.memory.memory_budget`):
        ``LiGOConfig.memory_budget``, ``LIGO_FAST_MEMORY_BUDGET`` or the memory free when the model was built (or
        first used on this device), read once and kept."""
        return self._budget()[0]

    def _budget(self) -> tuple[int, str]:
        budgets = self.__dict__.setdefault("_budgets", {})  # a model pickled by an older version has none
        return budget_for(budgets, self.device, self.execution_options.memory_budget)

    def lean_chunk(self, args=(), kwargs=None) -> int:
        """Layers per chunk of memory-lean mode for this batch: about sqrt(L2), fewer if memory is short."""
        return self.execution_plan(args, kwargs).chunk

    def lean_now(self, args=(), kwargs=None) -> bool:
        """Whether a forward on this batch uses memory-lean expansion (``LiGOConfig.lean``; None = auto).

        Auto: on while gradients are recorded and the eager step would not fit in the memory budget
        (:attr:`memory_budget`, read once; :meth:`memory_plan`): a function of the batch shape and that number,
        so a run does not switch paths as the machine's free memory changes.
        """
        return self.execution_plan(args, kwargs).lean

    # ------------------------------------------------------------------ HF-like surface
    # What HF tooling (Trainer, accelerate, PEFT-style inspection) reads from a model: hf_surface.HFSurface answers
    # it from the large model (config, main_input_name, can_generate, the checkpointing aliases, the signed forward
    # in the instance's __dict__ that calls the class's forward); here what the operator changes.
    def _surface_model(self) -> nn.Module:
        return self.large

    @property
    def device(self) -> torch.device:
        return self.tensor(self.plan.slots[0].w).device

    def generate(self, *args, **kwargs):
        """``generate`` of the large HF model, with the produced weights (only where the HF class has it)."""
        if not hasattr(self.large, "generate"):
            raise AttributeError(f"{type(self.large).__name__} has no generate()")
        with torch.no_grad():
            # as Parameters, so HF's generate finds a device and dtype through model.parameters()
            params = {k: nn.Parameter(v, requires_grad=False) for k, v in self.produce().items()}
        with Binding() as binding:
            binding.install_named(self.large, params)
            return self.large.generate(*args, **kwargs)

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
        if reentrant and self.execution_options.linear_mode == "factored":
            raise ValueError(
                "reentrant activation checkpointing cannot recompute linear_mode='factored' layers; use "
                "use_reentrant=False (HF's default) or linear_mode='materialize' or 'auto'"
            )
        self.__dict__["_reentrant_checkpointing"] = bool(reentrant)
        super().activation_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)
        for m in self.large.modules():
            fn = m.__dict__.get("_gradient_checkpointing_func")
            if fn is not None:
                fn = getattr(fn, "ligo_wrapped", fn)
                m._gradient_checkpointing_func = hf_surface.recompute_with_installed(m, fn)

    def activation_checkpointing_disable(self) -> None:
        self.__dict__["_reentrant_checkpointing"] = False
        super().activation_checkpointing_disable()

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
        return materialized(self.hf_class, self.config, self._state_parts(), device=self.device, dtype=dtype,
                            avoid=storage_keys(mine), training=self.training)  # fmt: skip

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
        """The large model's state by name, in parts: the produced ones (:func:`ligo_fast.produce.produce_parts`:
        the vectors, then each module kind with a weight matrix, a per-layer kind in chunks of layers, bit for bit
        the forward's values), then the leftovers.

        ``row_blocks``, ``share``, ``get``, ``mine``, ``ranks``: as :func:`~ligo_fast.produce.produce_parts` takes
        them (``get`` None: this model's tensors); a rank's share of a sharded save
        (:func:`ligo_fast.distributed.save_materialized_distributed`) gets ``leftovers`` (None: none) in place of
        the large model's own.
        """
        yield from produce_parts(
            self.plan, get or self.tensor, row_blocks=row_blocks, share=share, mine=mine, ranks=ranks
        )
        if share is None or leftovers is not None:
            yield self.large.state_dict() if share is None else leftovers

    def operator_meta(self) -> dict:
        """What ``ligo_config.json`` records: the options, the small model's class, the large config."""
        return operator_io.operator_meta(self)

    def save_operator(self, path) -> None:
        """Save the operator (safetensors, official layout) and a JSON of its configuration into directory ``path``,
        streamed one tensor at a time (:func:`ligo_fast.operator_io.save`)."""
        operator_io.save(self, path)

    def official_state(self, internal: dict[str, Tensor], prefix: str = "") -> OrderedDict:
        """The official layout of ``internal``: this model's entries as ``nn.Module.state_dict`` collects them
        (``<prefix>op.*``, ``<prefix>large.*``); FSDP2 DTensors along a layer axis are gathered (collective), and
        the rows of tensors held per layer (``<prefix>op_rows.*``) stacked as ``<prefix>op.<name>``."""
        if self.held_per_layer:
            internal = OrderedDict(internal)
            # the same order on every rank: full_tensor is a collective
            for name, places in self.__dict__["_row_home"].items():
                rows = [internal.pop(f"{prefix}op_rows.{i}.{a}") for i, a in places]
                rows = [r.full_tensor() if hasattr(r, "full_tensor") else r for r in rows]
                internal[f"{prefix}op.{name}"] = torch.stack(rows)
        return operator_io.official_state(self, internal, prefix)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.held_per_layer:
            raise RuntimeError("load_state_dict: the operator is held per layer (sharded per block): load it before")
        check_state_fits({k: tuple(v.shape) for k, v in self.state_dict().items()}, state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        return f"{self.arch.family}: {self.L1} -> {self.L2} layers, {len(self.plan.slots)} module kinds"


# ---------------------------------------------------------------------- helpers
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
