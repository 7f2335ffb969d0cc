"""Who else uses a lookup table's weight: tied Parameters and storage shared between Parameters.

A sparse table's gradient stays sparse only while its lookups are the weight's sole use. Two
cases break that, and ``convert`` and ``SparseAware`` look for both before anything trains:

- a *tie*: the very same Parameter also belongs to another module (GPT-2's ``lm_head.weight``
  is ``wte.weight``). The other module adds a dense gradient, so the weight's ``.grad`` is dense
  and a sparse rule cannot take it; a dense rule can.
- *shared storage*: two distinct Parameters over one storage (``from_pretrained(old.weight)``
  on a tied model). Each gets its own optimizer state and the memory is updated twice per step,
  silently; no rule fixes that, so it is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class Uses:
    """The uses of one Parameter in a model."""

    owners: list[str] = field(default_factory=list)  # "module.attr" names holding it
    table_owners: list[str] = field(default_factory=list)  # the owners that are lookup tables
    sharing: list[str] = field(default_factory=list)  # other Parameters over the same storage

    @property
    def tied_outside_tables(self) -> list[str]:
        """Owners that are not lookup tables: each adds a dense gradient."""
        return [o for o in self.owners if o not in self.table_owners]


def is_table(module: nn.Module) -> bool:
    """A lookup table: torch's or sparsemb's Embedding / EmbeddingBag, or a module that says
    it is one (``sparsemb_lookup = True``: the sharded tables)."""
    return isinstance(module, (nn.Embedding, nn.EmbeddingBag)) or bool(
        getattr(type(module), "sparsemb_lookup", False)
    )


def _storage_key(p: Tensor) -> tuple[str, int] | None:
    if p.device.type == "meta" or p.numel() == 0:
        return None
    ptr = p.untyped_storage().data_ptr()
    return (str(p.device), ptr) if ptr else None


def parameter_uses(model: nn.Module) -> dict[int, Uses]:
    """``{id(parameter): Uses}`` for every Parameter of ``model``, ties and sharing included."""
    uses: dict[int, Uses] = {}
    first_name: dict[int, str] = {}
    by_storage: dict[tuple[str, int], list[int]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module.named_parameters(recurse=False):
            name = f"{module_name}.{attr}" if module_name else attr
            entry = uses.setdefault(id(p), Uses())
            if name in entry.owners:
                continue
            entry.owners.append(name)
            if is_table(module) and attr == "weight":
                entry.table_owners.append(name)
            if id(p) not in first_name:
                first_name[id(p)] = name
                key = _storage_key(p)
                if key is not None:
                    by_storage.setdefault(key, []).append(id(p))
    for ids in by_storage.values():
        for pid in ids:
            uses[pid].sharing = [first_name[q] for q in ids if q != pid]
    return uses


def describe_sharing(name: str, uses: Uses) -> str:
    """An error message for a table whose storage another Parameter shares."""
    return (
        f"the weight {name!r} shares its storage with the distinct Parameter(s) "
        f"{uses.sharing}: an optimizer would keep two states and update that memory twice per "
        "step. Tie them with the very same Parameter instead (e.g. `lm_head.weight = "
        "wte.weight`), or swap tables in place with sparsemb.convert(model), which keeps the "
        "Parameter objects"
    )
