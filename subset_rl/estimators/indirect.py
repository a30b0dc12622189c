r"""Indirect parameterization (IP-CAE) and the concrete-autoencoder feature selector.

**Indirect parameterization.** Instead of learning the logits :math:`l \in \mathbb{R}^n`
directly, learn an embedding :math:`\psi \in \mathbb{R}^d` and a linear map,

.. math:: l = W\psi + b, \qquad W \in \mathbb{R}^{n \times d},\ b \in \mathbb{R}^n,

(one :math:`\psi` per row when several logit vectors are produced, e.g. the ``k`` selectors of
a concrete autoencoder, all sharing :math:`W, b`). The function class is the same, but the
gradient dynamics differ: the logits of all rows move together through the shared :math:`W`,
which Nilsson et al. (2024) show stabilises training and sharply reduces duplicate selections
in concrete autoencoders. :class:`IndirectLogits` is an ``nn.Module`` whose ``forward()``
returns logits, so it plugs into every estimator of :mod:`subset_rl.estimators` and into
:class:`~subset_rl.KSubsetPolicy`.

**Concrete autoencoder (CAE).** Abid et al. (2019) select ``k`` of ``n`` features with ``k``
independent selector neurons; selector :math:`j` has logits :math:`L_j \in \mathbb{R}^n` and, in
training, emits a Gumbel-softmax sample
:math:`m_j = \operatorname{softmax}((L_j + G_j)/\tau)`, so the encoder output is
:math:`x \mapsto (m_j^\top x)_{j=1}^k`. At test time each selector takes
:math:`\arg\max_i L_{ji}`. Nothing prevents two selectors from choosing the same feature; the
*unique percentage* :math:`100 \cdot |\{\arg\max_i L_{ji}\}_j| / k` measures how many of the
``k`` slots are actually distinct features (:func:`unique_percentage`).

References:
    * A. Abid, M. F. Balin, J. Zou. Concrete autoencoders: Differentiable feature selection
      and reconstruction. ICML 2019.
    * A. Nilsson, K. Wijk, S. B. R. Gutha, E. Englesson, A. Hotti, C. Saccardi, O. Kviman,
      J. Lagergren, R. Vinuesa, H. Azizpour. Indirectly parameterized concrete autoencoders.
      ICML 2024.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._common import check_int, check_positive, check_tensor, gumbel_like

__all__ = ["ConcreteSelector", "IndirectLogits", "unique_percentage"]


class IndirectLogits(nn.Module):
    r"""IP module: logits :math:`l = W\psi + b` from a learned embedding :math:`\psi`.

    Args:
        num_items: ``n``, the number of items (length of each logit vector).
        embedding_dim: ``d``, size of the embedding :math:`\psi`.
        num_rows: ``None`` for a single logit vector of shape ``(n,)``; an int ``r`` for
            ``r`` embeddings (shape ``(r, d)``) and logits of shape ``(r, n)`` sharing ``W, b``.

    Attributes:
        psi: the embedding parameter, ``(d,)`` or ``(r, d)``, initialised :math:`N(0, 1)`.
        linear: the ``nn.Linear(d, n)`` holding :math:`W` (``linear.weight``) and :math:`b`.

    Example:
        >>> ip = IndirectLogits(num_items=20, embedding_dim=8)
        >>> policy = KSubsetPolicy(ip(), k=5)  # or simple_sample(ip(), 5), sfess(...), ...
    """

    def __init__(self, num_items: int, embedding_dim: int, num_rows: int | None = None) -> None:
        super().__init__()
        self.num_items = check_int(num_items, "num_items", 1)
        self.embedding_dim = check_int(embedding_dim, "embedding_dim", 1)
        self.num_rows = None if num_rows is None else check_int(num_rows, "num_rows", 1)
        shape = (
            (self.embedding_dim,) if self.num_rows is None else (self.num_rows, self.embedding_dim)
        )
        self.psi = nn.Parameter(torch.randn(shape))
        self.linear = nn.Linear(self.embedding_dim, self.num_items)

    @property
    def weight(self) -> Tensor:
        """:math:`W`, shape ``(n, d)``."""
        return self.linear.weight

    @property
    def bias(self) -> Tensor:
        """:math:`b`, shape ``(n,)``."""
        return self.linear.bias

    def forward(self) -> Tensor:
        """Return the logits :math:`W\\psi + b`, shape ``(n,)`` or ``(num_rows, n)``."""
        return self.linear(self.psi)

    def extra_repr(self) -> str:
        return (
            f"num_items={self.num_items}, embedding_dim={self.embedding_dim}, "
            f"num_rows={self.num_rows}"
        )


def unique_percentage(selection: Tensor) -> Tensor:
    r"""Percentage of distinct items among ``k`` selections, :math:`100\,|\mathrm{unique}| / k`.

    Args:
        selection: either integer indices ``(..., k)``, or selector weights ``(..., k, n)``
            (one-hot, relaxed or logits; each selector's choice is its arg-max over ``n``).

    Returns:
        ``(...)`` float tensor in ``[100 / k, 100]``; 100 means no duplicates.
    """
    selection = check_tensor(selection, "selection")
    if selection.is_floating_point():
        if selection.dim() < 2:
            raise ValueError(
                "float selection must be selector weights of shape (..., k, n), found shape "
                f"{tuple(selection.shape)}"
            )
        indices = selection.argmax(-1)
    elif selection.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        if selection.dim() < 1:
            raise ValueError("integer selection must have shape (..., k), found shape ()")
        indices = selection.long()
    else:
        raise TypeError(
            "selection must be integer indices or float selector weights, found dtype "
            f"{selection.dtype}"
        )
    k = indices.shape[-1]
    if k == 0:
        raise ValueError("selection must contain at least one selector (k >= 1), found k = 0")
    ordered = indices.sort(-1).values
    distinct = 1 + (ordered[..., 1:] != ordered[..., :-1]).sum(-1)
    return distinct.to(torch.get_default_dtype()) * (100.0 / k)


class ConcreteSelector(nn.Module):
    r"""Concrete-autoencoder selector: ``k`` Gumbel-softmax selectors over ``n`` features.

    Args:
        num_items: ``n``, number of features.
        k: number of selectors (features to select).
        temperature: Gumbel-softmax temperature :math:`\tau > 0` (anneal it by assigning
            ``selector.temperature``).
        embedding_dim: ``None`` for direct logits (a free ``(k, n)`` parameter, the original CAE);
            an int ``d`` for the indirect parameterization :math:`L = \Psi W^\top + b` of IP-CAE.

    Example:
        >>> sel = ConcreteSelector(num_items=784, k=50, embedding_dim=784)
        >>> encoded = sel(x)  # (batch, 50)
        >>> sel.unique_percentage()  # 100 when the 50 selectors pick 50 distinct features
    """

    def __init__(
        self,
        num_items: int,
        k: int,
        *,
        temperature: float = 1.0,
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.num_items = check_int(num_items, "num_items", 1)
        self.k = check_int(k, "k", 1)
        self.temperature = check_positive(temperature, "temperature")
        self.logit_source: IndirectLogits | None = None
        if embedding_dim is None:
            self.direct_logits = nn.Parameter(
                torch.empty(self.k, self.num_items).uniform_(-1e-2, 1e-2)
            )
        else:
            self.register_parameter("direct_logits", None)
            self.logit_source = IndirectLogits(self.num_items, embedding_dim, num_rows=self.k)

    def logits(self) -> Tensor:
        """Selector logits, shape ``(k, n)``."""
        if self.logit_source is not None:
            return self.logit_source()
        if self.direct_logits is None:
            raise RuntimeError("ConcreteSelector has neither direct nor indirect logits")
        return self.direct_logits

    def selection(self, generator: torch.Generator | None = None) -> Tensor:
        """Selection matrix ``(k, n)``: Gumbel-softmax rows in training, one-hot arg-max in eval."""
        logits = self.logits()
        if not self.training:
            return nn.functional.one_hot(logits.argmax(-1), self.num_items).to(logits.dtype)
        noisy = (logits + gumbel_like(logits.detach(), generator)) / self.temperature
        return torch.softmax(noisy, dim=-1)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Select features: ``(..., n)`` inputs to ``(..., k)`` selected (mixed) features."""
        x = check_tensor(x, "x")
        if x.dim() < 1 or x.shape[-1] != self.num_items:
            raise ValueError(f"x must have shape (..., n={self.num_items}), found {tuple(x.shape)}")
        return x @ self.selection(generator).transpose(0, 1).to(x.dtype)

    @torch.no_grad()
    def indices(self) -> Tensor:
        """Test-time choice of every selector (arg-max of its logits), ``(k,)`` int64."""
        return self.logits().argmax(-1)

    @torch.no_grad()
    def unique_percentage(self) -> float:
        """:func:`unique_percentage` of the current test-time choices."""
        return float(unique_percentage(self.indices()))

    def extra_repr(self) -> str:
        mode = "direct" if self.logit_source is None else "indirect"
        return f"num_items={self.num_items}, k={self.k}, temperature={self.temperature}, {mode}"
