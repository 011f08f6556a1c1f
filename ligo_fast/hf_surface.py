"""What a LiGOModel needs to look like the large Hugging Face model to HF tooling (Trainer, accelerate, PEFT).

* **The call signature.** ``LiGOModel.forward(*args, **kwargs)`` passes everything through, which hides the large
  model's argument names from ``inspect.signature``: HF ``Trainer`` then drops every dataset column
  (``remove_unused_columns``) and does not pass ``num_items_in_batch``. :func:`signed_forward` returns, per
  instance, a bound ``forward`` that calls the class's own ``forward`` and carries the large model's
  ``__signature__``.
* **Activation checkpointing.** HF's checkpointed blocks recompute their forward during backward, when the
  produced weights and the factored forwards (bound on the large model's modules by
  :func:`ligo_fast.execution.bind`) are gone. :func:`recompute_with_installed` wraps a block's checkpoint function
  so that the recompute runs with what the block held when its forward ran.
* **The attributes HF tooling reads.** :class:`HFSurface`, a mixin of :class:`ligo_fast.LiGOModel` and
  :class:`ligo_fast.integrations.GrowingModel`: ``config``, ``main_input_name``, ``supports_gradient_checkpointing``,
  ``can_generate``, ``generate``, ``num_parameters``, activation checkpointing under its new and old names,
  ``save_pretrained``, answered by the HF model the instance stands for, and the signed ``forward`` (kept by copies).
* **Shapes without weights.** ``repr`` and parameter counts of the large model read the produced parameters,
  which the large model does not hold: :func:`meta_twin` builds the large model on the meta device (no memory),
  and :func:`placeholders` sets meta tensors of the right shapes for the duration of a ``repr``.

Imports: ``binding``, torch and the standard library; used by :mod:`ligo_fast.model` and
:mod:`ligo_fast.integrations.trainer`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from types import MethodType

import torch
from torch import nn

from .binding import Binding, installed

FORWARD = "forward"


def signed_forward(model: nn.Module, large: nn.Module) -> MethodType:
    """A bound ``forward`` for ``model`` that runs ``type(model).forward`` and has ``large``'s call signature.

    Stored in the instance's ``__dict__`` it takes precedence over the class's method, so ``model(...)``,
    ``model.forward`` and ``inspect.signature(model.forward)`` all see it; the class's ``forward`` (looked up at
    every call) stays the implementation.
    """

    def forward(self, *args, **kwargs):
        return type(self).forward(self, *args, **kwargs)

    forward.__signature__ = inspect.signature(type(large).forward)  # with ``self``: binding drops it
    forward.__name__ = FORWARD
    forward.__qualname__ = f"{type(model).__name__}.{FORWARD}"
    forward.__doc__ = (
        f"Called exactly like {type(large).__name__}.forward (same arguments, same outputs), with the weights the "
        "LiGO operator produces."
    )
    return MethodType(forward, model)


# ---------------------------------------------------------------------------------------- the surface
class HFSurface:
    """The Hugging Face model surface, answered by the HF model an instance stands for (:meth:`_surface_model`).

    Mixed into an ``nn.Module`` subclass (before ``nn.Module`` in its bases), which defines ``_surface_model`` and
    overrides what it answers otherwise (``LiGOModel`` produces the weights for ``generate``, counts parameters
    without them, wraps checkpointing and saves its operator). ``forward`` is installed per instance with the HF
    model's signature (:func:`signed_forward`) by :meth:`_install_signature`, and again on every copy.
    """

    _keys_to_ignore_on_save = None  # Trainer reads it when a checkpoint misses keys

    def _surface_model(self) -> nn.Module:
        """The model whose answers this one gives."""
        raise NotImplementedError

    def _signature_model(self) -> nn.Module:
        """The HF model whose ``forward`` signature this one's ``forward`` carries."""
        return self._surface_model()

    def _install_signature(self) -> None:
        self.__dict__[FORWARD] = signed_forward(self, self._signature_model())

    def __setstate__(self, state) -> None:
        super().__setstate__(state)  # copying or unpickling binds the class's forward: the signed one again
        self._install_signature()

    @property
    def config(self):
        return self._surface_model().config

    @property
    def main_input_name(self) -> str:
        return getattr(self._surface_model(), "main_input_name", "input_ids")

    @property
    def supports_gradient_checkpointing(self) -> bool:
        return bool(getattr(self._surface_model(), "supports_gradient_checkpointing", False))

    def can_generate(self) -> bool:
        """Whether ``generate`` works: the HF model's answer."""
        can = getattr(self._surface_model(), "can_generate", None)
        return bool(can()) if can is not None else False

    def generate(self, *args, **kwargs):
        """The HF model's ``generate``."""
        return self._surface_model().generate(*args, **kwargs)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """HF's ``num_parameters`` of the model this one stands for."""
        return self._surface_model().num_parameters(
            only_trainable=only_trainable, exclude_embeddings=exclude_embeddings
        )

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, **kwargs) -> None:
        """HF's ``activation_checkpointing_enable`` (same arguments) of the model this one stands for."""
        enable_checkpointing(self._surface_model(), activation_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        disable_checkpointing(self._surface_model())

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs) -> None:
        """The older name of :meth:`activation_checkpointing_enable`."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self._surface_model().modules())

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """The ``save_pretrained`` of the model this one stands for."""
        self._surface_model().save_pretrained(save_directory, **kwargs)


def enable_checkpointing(model: nn.Module, activation_checkpointing_kwargs=None, **kwargs) -> None:
    """``model.activation_checkpointing_enable`` (or, in transformers before the rename,
    ``gradient_checkpointing_enable``) with these arguments."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs)
    else:  # transformers before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs)


def disable_checkpointing(model: nn.Module) -> None:
    """``model.activation_checkpointing_disable`` (or ``gradient_checkpointing_disable``)."""
    disable = getattr(model, "activation_checkpointing_disable", None)
    (disable or model.gradient_checkpointing_disable)()


# ---------------------------------------------------------------------------------------- checkpointing
@contextmanager
def _reinstalled(held: list[tuple[nn.Module, str, object]]):
    """Bind ``held`` on its modules where they do not hold it already; undo exactly that on exit."""
    with Binding() as binding:
        for m, leaf, v in held:
            if m.__dict__.get(leaf) is not v:
                binding.install(m, leaf, v)
        yield


def recompute_with_installed(block: nn.Module, checkpoint_fn: Callable) -> Callable:
    """Wrap HF's ``block._gradient_checkpointing_func`` so the recompute in backward sees the produced weights.

    At the checkpointed call the block's modules hold the produced tensors (the ones autograd would have kept
    anyway) and the factored forwards, as bound by :func:`ligo_fast.execution.bind`
    (:func:`ligo_fast.binding.installed`). The tensors go into the checkpoint as extra inputs, and the wrapped
    function installs what it receives around the block's forward: a no-op in the forward; in the recompute the
    same tensors (non-reentrant) or detached copies whose gradients the checkpoint hands back to the production
    graph (reentrant). In memory-lean mode each checkpointed block's weights stay until its backward, as in the
    eager path.
    """

    def checkpointed(function, *args, **kwargs):
        held = installed(block)
        tensors = [i for i, (_, _, v) in enumerate(held) if isinstance(v, torch.Tensor)]
        n = len(args)

        def run(*a):
            now = list(held)
            for i, t in zip(tensors, a[n:], strict=True):
                m, leaf, _ = held[i]
                now[i] = (m, leaf, t)
            with _reinstalled(now):
                return function(*a[:n])

        return checkpoint_fn(run, *args, *(held[i][2] for i in tensors), **kwargs)

    checkpointed.ligo_wrapped = checkpoint_fn  # what ``activation_checkpointing_enable`` unwraps when called again
    return checkpointed


# --------------------------------------------------------------------------------------------- shapes
def meta_twin(hf_class: type, config) -> nn.Module:
    """The large HF model built on the meta device: its structure and shapes without memory."""
    with torch.device("meta"):
        return hf_class(copy.deepcopy(config))


@contextmanager
def placeholders(large: nn.Module, twin: nn.Module, names: Iterable[str]):
    """Meta tensors of ``twin``'s shapes on ``large`` for the produced ``names`` it does not hold (e.g. for repr)."""
    shapes = dict(twin.named_parameters(remove_duplicate=False))
    with Binding() as binding:
        for name in names:
            parent, _, leaf = name.rpartition(".")
            m = large.get_submodule(parent)
            if leaf not in m.__dict__ and leaf not in m._parameters and name in shapes:
                binding.install(m, leaf, shapes[name].detach())
        yield
