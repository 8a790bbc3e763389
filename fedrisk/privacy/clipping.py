"""Per-record gradient clipping for networks of ``nn.Linear`` layers, in one backward pass.

DP-SGD needs, for every record ``i`` of a batch, the norm of its own gradient
``∇ℓᵢ`` and then the sum of the clipped gradients ``Σᵢ cᵢ ∇ℓᵢ`` with
``cᵢ = min(1, C / ‖∇ℓᵢ‖)``. For a linear layer ``z = a Wᵀ + b`` the per-record
gradient is an outer product, ``∇W ℓᵢ = gᵢ aᵢᵀ`` and ``∇b ℓᵢ = gᵢ`` (``aᵢ`` the
layer's input row, ``gᵢ = ∂ℓᵢ/∂zᵢ``), so

- its squared norm is ``‖gᵢ‖²‖aᵢ‖² + ‖gᵢ‖²`` without forming it: the ghost-clipping
  norm of Opacus' ``nn.Linear`` norm sampler (``compute_linear_norm_sample``);
- the clipped sum is ``(c ⊙ G)ᵀ A`` and ``Σᵢ cᵢ gᵢ``: one matrix product per layer
  ("book-keeping", Bu et al. 2023), where Opacus' ghost clipping runs a second
  backward pass with the loss reweighted by ``c``.

So one forward and one backward pass (to the layers' outputs only) give the same
clipped sum as materializing every per-record gradient, at about the cost of
non-private training. The identity holds because no layer mixes records (no
BatchNorm: :mod:`fedrisk.models.networks`), so row ``i`` of every layer's output
depends on record ``i`` alone; and because each layer runs once per forward pass
(checked: a shared layer would need the cross terms this formula drops).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

ExtraRecords = Mapping[nn.Linear, tuple[torch.Tensor, torch.Tensor]]
"""Records given by their layer inputs and output gradients instead of a loss: for each
``nn.Linear`` layer they touch, ``(A, G)`` with one row per record (the same ``aᵢ``, ``gᵢ``
the forward and backward passes give a real record); zero gradient on every other layer."""


class UnsupportedNetwork(ValueError):
    """The network has trainable parameters outside ``nn.Linear`` layers, or reuses a layer."""


class LinearRecordGradients:
    """Per-record norms and the clipped gradient sum of a network whose parameters are Linear.

    While attached, forward hooks record each ``nn.Linear`` layer's input and output;
    :meth:`clipped_sum` then backpropagates the per-record losses to the layers'
    outputs only and writes ``Σᵢ cᵢ ∇ℓᵢ`` into each parameter's ``.grad`` (views of one
    flat tensor, so noise can be added in one operation). Use as a context manager:
    the hooks are removed on exit, whatever happens.
    """

    def __init__(self, model: nn.Module) -> None:
        """Find the Linear layers of ``model``; refuse any other trainable parameter."""
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.Linear) and m.weight.requires_grad]
        covered = {id(p) for layer in self.layers for p in layer.parameters(recurse=False)}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and id(parameter) not in covered:
                raise UnsupportedNetwork(
                    f"DP-SGD clips per record only networks of nn.Linear layers; parameter "
                    f"'{name}' is outside one")
        self.parameters = [p for layer in self.layers for p in _own_parameters(layer)]
        if len({id(p) for p in self.parameters}) != len(self.parameters):
            raise UnsupportedNetwork("two Linear layers share a parameter; per-record norms "
                                     "would miss cross terms")
        self.flat_grad = torch.zeros(sum(p.numel() for p in self.parameters))
        self._grad_views = _views(self.flat_grad, self.parameters)
        self._grad_of = dict(zip(self.parameters, self._grad_views, strict=True))
        self._tape: dict[nn.Linear, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LinearRecordGradients:
        """Start recording the Linear layers' inputs and outputs."""
        self._handles = [layer.register_forward_hook(self._record) for layer in self.layers]
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Remove the hooks and forget what was recorded."""
        for handle in self._handles:
            handle.remove()
        for parameter in self.parameters:
            parameter.grad = None
        self._handles, self._tape = [], {}

    def _record(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...],
                output: torch.Tensor) -> None:
        if layer in self._tape:
            raise UnsupportedNetwork("a Linear layer ran twice in one forward pass (shared "
                                     "weights); per-record norms would miss cross terms")
        if inputs[0].dim() != 2:
            raise UnsupportedNetwork("per-record clipping needs (batch, features) inputs")
        self._tape[layer] = (inputs[0].detach(), output)

    def clipped_sum(self, record_losses: torch.Tensor, max_grad_norm: float,
                    extra: ExtraRecords | None = None) -> torch.Tensor:
        """Set every parameter's ``.grad`` to ``Σᵢ min(1, C/‖∇ℓᵢ‖) ∇ℓᵢ``; return ``‖∇ℓᵢ‖``.

        ``record_losses`` holds one loss per record of the batch just run forward
        (``ℓᵢ``, not averaged); ``max_grad_norm`` is the clipping bound C, the DP
        sensitivity of the sum. An empty batch sets every gradient to 0.

        ``extra`` (audit only: the gradient canaries of
        :class:`fedrisk.privacy.dpsgd.GradientCanaries`) adds records given by their
        layer inputs and output gradients: their norms and clipped sum come from the
        same formulas and the same :func:`clip_factors` call as the batch's records, so
        a canary is clipped exactly as a record would be. Returned norms are the batch's.
        """
        used = [layer for layer in self.layers if layer in self._tape]
        inputs = [self._tape[layer][0] for layer in used]
        outputs = [self._tape[layer][1] for layer in used]
        self._tape = {}
        found = torch.autograd.grad(record_losses.sum(), outputs, allow_unused=True)
        # A layer whose output the loss does not use (a head left out) has gradient 0.
        backprops = [torch.zeros_like(z) if g is None else g for z, g in zip(
            outputs, found, strict=True)]
        squared = torch.zeros(len(record_losses))
        for layer, a, g in zip(used, inputs, backprops, strict=True):
            squared += _squared_norms(layer, a, g)
        norms = squared.sqrt()
        if extra:
            extra_norms = _extra_squared_norms(extra).sqrt()
            factors, extra_factors = clip_factors(torch.cat([norms, extra_norms]),
                                                  max_grad_norm).split([len(norms),
                                                                        len(extra_norms)])
        else:
            factors = clip_factors(norms, max_grad_norm)
        self.flat_grad.zero_()
        for layer, a, g in zip(used, inputs, backprops, strict=True):
            self._add_clipped(layer, a, g, factors, overwrite=True)
        for layer, (a, g) in (extra or {}).items():
            self._add_clipped(layer, a, g, extra_factors, overwrite=False)
        for parameter, view in zip(self.parameters, self._grad_views, strict=True):
            parameter.grad = view
        return norms

    def _add_clipped(self, layer: nn.Linear, inputs: torch.Tensor, backprops: torch.Tensor,
                     factors: torch.Tensor, overwrite: bool) -> None:
        """``(c ⊙ G)ᵀ A`` into the weight's gradient and ``Σᵢ cᵢ gᵢ`` into the bias'."""
        clipped = backprops * factors[:, None]
        weight = self._grad_of[layer.weight]
        if overwrite:
            torch.mm(clipped.t(), inputs, out=weight)
        else:
            weight.addmm_(clipped.t(), inputs)
        if layer.bias is not None and layer.bias.requires_grad:
            if overwrite:
                torch.sum(clipped, 0, out=self._grad_of[layer.bias])
            else:
                self._grad_of[layer.bias].add_(clipped.sum(0))


def clip_factors(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """``min(1, C / (‖∇ℓᵢ‖ + 1e-6))`` per record, as Opacus' DP optimizers clip."""
    return (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


def _squared_norms(layer: nn.Linear, inputs: torch.Tensor, backprops: torch.Tensor
                   ) -> torch.Tensor:
    """``‖∇W ℓᵢ‖² + ‖∇b ℓᵢ‖² = ‖gᵢ‖²(‖aᵢ‖² + 1)`` per record (the bias term if it trains)."""
    output_norms = backprops.square().sum(1)
    input_norms = inputs.square().sum(1)
    if layer.bias is not None and layer.bias.requires_grad:
        input_norms = input_norms + 1.0
    return output_norms * input_norms


def _extra_squared_norms(extra: ExtraRecords) -> torch.Tensor:
    """Squared gradient norm of each extra record, summed over the layers it touches."""
    return torch.stack([_squared_norms(layer, a, g) for layer, (a, g) in extra.items()]).sum(0)


def _own_parameters(layer: nn.Linear) -> list[nn.Parameter]:
    return [p for p in (layer.weight, layer.bias) if p is not None and p.requires_grad]


def _views(flat: torch.Tensor, parameters: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    views, offset = [], 0
    for parameter in parameters:
        views.append(flat[offset:offset + parameter.numel()].view_as(parameter))
        offset += parameter.numel()
    return views
