"""``sparsemb.convert``: swap every torch lookup table of a model for sparsemb's, in place.

Each ``torch.nn.Embedding`` becomes a ``sparsemb.Embedding`` (and each ``nn.EmbeddingBag`` a
``sparsemb.EmbeddingBag``, where sparsemb has one) by changing the class of the module object
itself. ``sparsemb.Embedding`` subclasses ``nn.Embedding`` and adds one attribute, so nothing
else has to move: the module keeps its identity (every reference to it, its hooks, HF's
``get_input_embeddings()``), and its weight stays the very same Parameter, so dtype, device,
``requires_grad`` (frozen tables), ties to an output layer and existing optimizers carry over.
Building new modules and copying weights would break each of those.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from sparsemb import _ties
from sparsemb._checks import check_bounds_check, check_renorm_args, check_table_args
from sparsemb.nn import Embedding

TIED_CHOICES = ("dense", "raise")


@dataclass
class ConvertReport:
    """What ``convert`` did, by module name ("" is the model itself)."""

    replaced: list[str] = field(default_factory=list)  # torch tables now sparsemb's
    kept: list[str] = field(default_factory=list)  # already sparsemb tables (options applied)
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it was left alone
    tied: dict[str, list[str]] = field(default_factory=dict)  # table -> other owners of weight
    dense_because_tied: list[str] = field(default_factory=list)  # sparse=True refused: tied

    def __str__(self) -> str:
        lines = [f"sparsemb.convert: replaced {len(self.replaced)} table(s), "
                 f"{len(self.kept)} already sparsemb"]
        lines += [f"  replaced {name or '<model>'}" for name in self.replaced]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        lines += [f"  {name} is tied to {others}" for name, others in self.tied.items()]
        lines += [f"  {name}: dense gradient (tied)" for name in self.dense_because_tied]
        return "\n".join(lines)


def _targets() -> dict[type, type]:
    """torch class -> sparsemb class; EmbeddingBag only where sparsemb provides one."""
    import sparsemb

    targets: dict[type, type] = {nn.Embedding: Embedding}
    bag = getattr(sparsemb, "EmbeddingBag", None)
    if isinstance(bag, type) and issubclass(bag, nn.EmbeddingBag):
        targets[nn.EmbeddingBag] = bag
    return targets


def _new_attributes(cls: type) -> dict[str, Any]:
    """The plain attributes a fresh ``cls`` has beyond its torch base (e.g. ``bounds_check``),
    read from a tiny prototype, so the swapped module has every attribute its forward reads."""
    base = next(b for b in cls.__mro__[1:] if b.__module__.startswith("torch."))
    proto, plain = cls(2, 1), base(2, 1)
    return {k: v for k, v in vars(proto).items() if k not in vars(plain)}


def _check_options(options: dict[str, Any]) -> None:
    allowed = {"bounds_check", "max_norm", "norm_type", "scale_grad_by_freq"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"convert got unknown option(s) {unknown}; allowed: {sorted(allowed)}")
    if "bounds_check" in options:
        check_bounds_check(options["bounds_check"])
    if "max_norm" in options or "norm_type" in options:
        check_renorm_args(options.get("max_norm"), options.get("norm_type", 2.0))


def convert(
    model: nn.Module,
    *,
    sparse: bool | None = None,
    tied: str = "dense",
    skip: tuple[str, ...] = (),
    **options: Any,
) -> ConvertReport:
    """Swap every ``nn.Embedding`` of ``model`` for ``sparsemb.Embedding`` in place.

    ``sparse``: True / False sets every table's gradient layout; None keeps each table's own.
    ``tied``: what to do with a table whose weight another module also uses (an output layer
    tied to the input embedding) when it would be sparse: ``"dense"`` (default) gives it a dense
    gradient, which the tie makes anyway, with a warning; ``"raise"`` raises ValueError.
    ``skip``: module names to leave alone. ``options``: ``bounds_check``, ``max_norm``,
    ``norm_type``, ``scale_grad_by_freq``, set on every table.

    Keeps each module object, its weight Parameter (so dtype, device, ``requires_grad``, ties,
    hooks and optimizers carry over), ``padding_idx`` and every other option. Subclasses of
    ``nn.Embedding`` other than sparsemb's are left alone (their ``forward`` may differ; HF's
    scaled embeddings, for instance) and listed in ``report.skipped``. Idempotent: a second call
    replaces nothing and applies the same options. Everything is checked before any module
    changes. Returns a ``ConvertReport``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert takes an nn.Module, got {type(model).__name__}")
    if sparse is not None and not isinstance(sparse, bool):
        raise TypeError(f"sparse must be True, False or None, got {sparse!r}")
    if tied not in TIED_CHOICES:
        raise ValueError(f"tied must be one of {TIED_CHOICES}, got {tied!r}")
    _check_options(options)
    targets = _targets()
    sparsemb_classes = tuple(targets.values())
    report = ConvertReport()
    plan = []  # (name, module, new class or None)
    for name, module in model.named_modules():
        if name in skip or not _ties.is_table(module):
            continue
        if isinstance(module, sparsemb_classes):
            plan.append((name, module, None))
        elif type(module) in targets:
            weight = module.weight
            check_table_args(module.num_embeddings, module.embedding_dim, None, weight)
            plan.append((name, module, targets[type(module)]))
        elif type(module) is nn.EmbeddingBag:
            report.skipped[name] = "this sparsemb has no EmbeddingBag"
        else:
            report.skipped[name] = (
                f"{type(module).__name__} subclasses a torch table with its own forward, which "
                "sparsemb does not know; convert it by hand"
            )
    uses = _ties.parameter_uses(model)
    make_dense = []
    for name, module, _ in plan:
        entry = uses.get(id(module.weight))
        if entry is None:
            continue
        others = [o for o in entry.owners if o != f"{name}.weight".lstrip(".")]
        if others:
            report.tied[name] = others
        will_be_sparse = module.sparse if sparse is None else sparse
        if not (will_be_sparse and module.weight.requires_grad):
            continue
        if entry.sharing:
            raise ValueError(_ties.describe_sharing(f"{name}.weight".lstrip("."), entry))
        outside = [o for o in entry.tied_outside_tables if o in others]
        if outside:
            if tied == "raise":
                raise ValueError(
                    f"table {name or '<model>'!r} is tied to {outside}: those modules add a dense "
                    "gradient to its weight, so it cannot train with a sparse gradient. Pass "
                    "tied='dense' (the table then has a dense gradient and SparseAware gives it "
                    "the dense optimizer), untie the weights, or use sparse=False"
                )
            make_dense.append((name, outside))
    for name, module, cls in plan:  # everything checked: now change the modules
        if cls is not None:
            extra = _new_attributes(cls)
            module.__class__ = cls
            for key, value in extra.items():
                setattr(module, key, value)
            report.replaced.append(name)
        else:
            report.kept.append(name)
        if sparse is not None:
            module.sparse = sparse
        for key, value in options.items():
            setattr(module, key, value)
    for name, outside in make_dense:
        module = model.get_submodule(name)
        module.sparse = False
        report.dense_because_tied.append(name)
        warnings.warn(
            f"sparsemb.convert: table {name or '<model>'!r} is tied to {outside}, which add a "
            "dense gradient to its weight; it keeps a dense gradient (sparse=False) and "
            "SparseAware gives it the dense optimizer. Pass tied='raise' to make this an error.",
            stacklevel=2,
        )
    return report


__all__ = ["ConvertReport", "convert"]
