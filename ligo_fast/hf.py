"""Building the large Hugging Face model without allocating the weights the operator will produce.

``empty_parameters()`` constructs a model whose parameters live on the ``meta`` device (no memory, no random
init) while its buffers (position ids, rotary frequencies) are real: LiGOModel deletes the parameters the operator
produces and materialises only the few that remain (:func:`materialize_leftovers`). ``with_layers`` gives a copy of
a config with another layer count, for estimates that must not build every layer. ``empty_model`` and
``fill`` build a plain model from produced tensors without a throw-away init or a second copy: the model is built
with its parameters on meta and each tensor is assigned (not copied) as it arrives; ``materialized`` does both, for
``LiGOModel.materialize`` and the official API's ``materialize_compat``.
Imports: torch and the HF config/model objects it is given; of ligo_fast only ``heap``.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from . import heap

logger = logging.getLogger(__name__)


@contextmanager
def empty_parameters() -> Iterator[None]:
    """Within the context, every ``nn.Parameter`` registered on a module is moved to ``meta`` at registration."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def with_layers(config, layers: int):
    """A copy of ``config`` with ``num_hidden_layers`` (or the family's alias of it) set to ``layers``."""
    c = copy.deepcopy(config)
    c.num_hidden_layers = layers
    return c


@torch.no_grad()
def materialize_leftovers(large: nn.Module, small_sd: dict[str, Tensor], device: torch.device) -> list[str]:
    """Give every parameter of ``large`` still on ``meta`` real storage on ``device``; returns their names.

    A parameter the small model has with the same name and shape (one that does not grow, such as BERT's
    vocabulary bias) takes the small model's values; any other is initialised by the HF model's own
    ``_init_weights`` of its module (zeros, with a warning, where that fails).
    """
    names = []
    for mod_name, module in large.named_modules():
        leftover = [(leaf, p) for leaf, p in module._parameters.items() if p is not None and p.device.type == "meta"]
        if not leftover:
            continue
        for leaf, p in leftover:
            module._parameters[leaf] = nn.Parameter(
                torch.zeros(p.shape, dtype=p.dtype, device=device), requires_grad=p.requires_grad
            )
        full = [(f"{mod_name}.{leaf}" if mod_name else leaf, leaf) for leaf, _ in leftover]
        if any(small_sd.get(n) is None or small_sd[n].shape != module._parameters[leaf].shape for n, leaf in full):
            try:
                large._init_weights(module)
            except Exception as e:  # noqa: BLE001 - a produced parameter the init reads is gone: keep zeros
                logger.warning("could not initialise %s with the model's own init (%s); it starts at zero", mod_name, e)
        for n, leaf in full:
            src = small_sd.get(n)
            if src is not None and src.shape == module._parameters[leaf].shape:
                module._parameters[leaf].copy_(src)
            names.append(n)
    return names


def empty_model(hf_class: type, config) -> nn.Module:
    """``hf_class(config)`` (a copy of it) with every parameter on meta and real buffers (rotary frequencies, ...)."""
    with empty_parameters():
        return hf_class(copy.deepcopy(config))


def storage_keys(tensors: Iterable[Tensor]) -> frozenset[int]:
    """The storages (data pointers) of ``tensors``: what :func:`fill` must not let the result reference."""
    keys = set()
    for t in tensors:
        try:
            keys.add(t.untyped_storage().data_ptr())
        except (RuntimeError, NotImplementedError):  # meta, a freed shard (FSDP2), a tensor without plain storage
            pass
    return frozenset(keys)


def _shared(t: Tensor, avoid: frozenset[int]) -> bool:
    """Whether ``t`` does not own its storage: a view into a larger tensor (one layer of a module kind), a tensor
    in a storage of ``avoid``, or one without plain storage (a DTensor, ...)."""
    try:
        storage = t.untyped_storage()
        return storage.nbytes() != t.numel() * t.element_size() or storage.data_ptr() in avoid
    except (RuntimeError, NotImplementedError):  # no plain storage: copy to be safe
        return True


def _out_dtype(t: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype ``t`` gets: ``dtype`` for a floating tensor, its own otherwise (as ``model.to(dtype)`` does)."""
    return dtype if (dtype is not None and t.is_floating_point()) else t.dtype


def _own(t: Tensor, device: torch.device, dtype: torch.dtype | None, avoid: frozenset[int]) -> Tensor:
    """``t`` on ``device`` in ``dtype`` (floating tensors only) in a storage of its own, copied only where needed:
    ``t`` is a view into a larger tensor (one layer of a module kind) or lives in a storage of ``avoid``."""
    t = t.detach()
    out = t.to(device=device, dtype=_out_dtype(t, dtype))
    return t.clone() if out is t and _shared(t, avoid) else out


def _take(t: Tensor, dst: Tensor, dtype: torch.dtype | None, avoid: frozenset[int]) -> Tensor:
    """What :func:`_own` gives, written into ``dst`` (an untouched tensor of the parameter's shape on the device)
    where a copy is needed: ``t`` itself where it owns its storage in the right dtype and device (``dst`` is then
    dropped, never touched)."""
    t = t.detach()
    want = _out_dtype(t, dtype)
    if t.device == dst.device and t.dtype == want and not _shared(t, avoid):
        return t
    return dst.copy_(t) if dst.dtype == want else _own(t, dst.device, dtype, avoid)


@torch.no_grad()
def fill(
    model: nn.Module,
    parts: Iterable[Mapping[str, Tensor]],
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    avoid: frozenset[int] = frozenset(),
) -> nn.Module:
    """Give ``model`` (from :func:`empty_model`) its tensors, part by part, and return it.

    Each part maps state-dict names to tensors; names tied in ``model`` (one meta parameter) get one Parameter,
    from the first of them to arrive (tied weights stay tied). Every tensor is taken as it is where it owns its
    storage and is in ``dtype`` on ``device``, else copied into the parameter's storage (on CPU allocated,
    untouched, for every parameter before the first part: see :func:`_take`), so a caller that drops a part after
    this call holds each produced value once and the parts' temporaries do not sit between the model's tensors.
    The model's own buffers move to ``device`` (floating ones to ``dtype``, as ``model.to`` would). RuntimeError
    names a parameter left on meta or a name the model does not have.
    """
    for module in model.modules():
        for leaf, b in module._buffers.items():
            if b is not None:
                module._buffers[leaf] = _own(b, device, dtype, frozenset())
    params = {n: n.rpartition(".") for n, _ in model.named_parameters(remove_duplicate=False)}
    buffers = {n: n.rpartition(".") for n, _ in model.named_buffers(remove_duplicate=False)}
    made: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}  # id of a meta parameter -> (it, its replacement)
    # on CPU every parameter's storage first, uninitialised (no page touched, so nothing resident until a value is
    # copied in): the production's temporaries, freed after each part, then come after the model's tensors in the
    # heap, not between them, where glibc kept their freed pages resident (materialize peaked up to 0.3x the model
    # higher); not on an accelerator, where an allocation counts at once (an owned tensor taken as is would have
    # cost its size twice)
    cpu = torch.device(device).type == "cpu"
    room = {
        id(p): torch.empty(p.shape, dtype=_out_dtype(p, dtype), device=device)
        for p in (model.parameters() if cpu else ())  # tied names once
        if p.device.type == "meta"
    }
    trimmer, kept = heap.Trimmer() if cpu else None, 0
    for part in parts:
        for name, t in part.items():
            if name in params:
                parent, _, leaf = params[name]
                module = model.get_submodule(parent)
                old = module._parameters[leaf]
                if old.device.type != "meta":  # a tie whose other name came first: the same parameter
                    continue
                if tuple(old.shape) != tuple(t.shape):
                    raise RuntimeError(
                        f"{name}: a tensor of shape {tuple(t.shape)} for a parameter of {tuple(old.shape)}"
                    )
                if id(old) not in made:  # names tied in the model share the meta parameter: one replacement
                    dst = room.pop(id(old), None)
                    value = _own(t, device, dtype, avoid) if dst is None else _take(t, dst, dtype, avoid)
                    kept += value.nbytes
                    made[id(old)] = (old, nn.Parameter(value, requires_grad=old.requires_grad))
                module._parameters[leaf] = made[id(old)][1]
            elif name in buffers:
                parent, _, leaf = buffers[name]
                model.get_submodule(parent)._buffers[leaf] = _own(t, device, dtype, avoid)
            else:
                raise RuntimeError(f"{type(model).__name__} has no parameter or buffer {name!r}")
        part = t = value = dst = None  # before the next part is produced: this one's (copied) tensors can go
        if trimmer is not None:  # and the pages its temporaries freed between the kept tensors (ligo_fast.heap)
            trimmer.kept(kept)
    left = [n for n, p in model.named_parameters(remove_duplicate=False) if p.device.type == "meta"]
    if left:
        raise RuntimeError(f"{type(model).__name__}: no value for {len(left)} parameters ({', '.join(left[:3])}, ...)")
    return model


@torch.no_grad()
def materialized(
    hf_class: type,
    config,
    parts: Iterable[Mapping[str, Tensor]],
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    training: bool,
    avoid: frozenset[int] = frozenset(),
    rest: Mapping[str, Tensor] | None = None,
) -> nn.Module:
    """A fresh plain ``hf_class(config)`` holding the tensors of ``parts``, then those of ``rest`` it has names for
    (what no part produces), in train mode when ``training``: :func:`empty_model` filled by :func:`fill` (no
    throw-away init, each part assigned as it arrives). The materialisation of a LiGOModel and of the official API's
    wrapped model."""
    model = empty_model(hf_class, config)
    if rest is not None:
        names = model.state_dict(keep_vars=True)
        parts = itertools.chain(parts, [{k: v for k, v in rest.items() if k in names}])
    return fill(model, parts, device=device, dtype=dtype, avoid=avoid).train(training)
