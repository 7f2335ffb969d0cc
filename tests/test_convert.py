"""sparsemb.convert and tied weights: swapping tables into a model built with torch.nn only."""

import copy
import warnings

import pytest
import torch
from torch import nn

import sparsemb
import sparsemb.optim
from helpers import dense, random_indices


class TinyLM(nn.Module):
    """GPT-2 in miniature: token and position tables, one block, an output layer whose weight is
    the token table's (weight tying)."""

    def __init__(self, vocab=40, dim=8, positions=16, tie=True):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(positions, dim)
        self.block = nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, batch_first=True)
        self.ln = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.lm_head.weight = self.wte.weight

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.lm_head(self.ln(self.block(self.wte(ids) + self.wpe(pos))))


def lm_loss(model, ids):
    logits = model(ids[:, :-1])
    return nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


class Tables(nn.Module):
    """Tables with every option, side by side."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.plain = nn.Embedding(30, 5)
        self.padded = nn.Embedding(30, 5, padding_idx=-2, sparse=True)
        self.renormed = nn.Embedding(30, 5, max_norm=0.7, norm_type=1.5)
        self.scaled = nn.Embedding(30, 5, scale_grad_by_freq=True)
        self.frozen = nn.Embedding.from_pretrained(torch.randn(30, 5), freeze=True)
        self.wide = nn.Embedding(30, 3, dtype=torch.float64)
        self.inner = nn.Sequential(nn.Embedding(30, 5), nn.Linear(5, 5))

    def forward(self, idx):
        parts = [self.plain(idx), self.padded(idx), self.renormed(idx), self.scaled(idx),
                 self.frozen(idx), self.inner(idx)]
        return torch.stack(parts).sum() + self.wide(idx).sum()


TABLES = ["plain", "padded", "renormed", "scaled", "frozen", "wide", "inner.0"]
OPTIONS = ["padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse"]


def test_convert_keeps_modules_parameters_options_and_numbers(backend):
    """The converted model on the backend's device against the torch model on CPU (torch's
    CUDA renorm is wrong for norm_type 1.5: see helpers.cuda_renorm_is_wrong)."""
    ref, model = Tables(), Tables().to(backend.device)
    modules = {name: model.get_submodule(name) for name in TABLES}
    weights = {name: m.weight for name, m in modules.items()}
    seen = []
    modules["plain"].register_forward_hook(lambda *_: seen.append(1))
    report = sparsemb.convert(model)
    assert sorted(report.replaced) == sorted(TABLES) and not report.kept
    for name in TABLES:
        module, twin = model.get_submodule(name), ref.get_submodule(name)
        assert module is modules[name] and type(module) is sparsemb.Embedding
        assert module.weight is weights[name]  # the very same Parameter
        assert module.bounds_check == "raise"
        assert module.weight.requires_grad == twin.weight.requires_grad
        assert module.weight.dtype == twin.weight.dtype
        assert [getattr(module, k) for k in OPTIONS] == [getattr(twin, k) for k in OPTIONS]
    idx = random_indices(30, (4, 7), hot=28)
    for net in (ref, model):
        for _ in range(2):  # max_norm renorms in place: the second pass sees renormed rows
            net(idx.clone().to(backend.device if net is model else "cpu")).backward()
    assert seen == [1, 1]  # the module's hooks still run
    for name in TABLES:
        ours, theirs = model.get_submodule(name).weight, ref.get_submodule(name).weight
        torch.testing.assert_close(ours.cpu(), theirs)  # renorm: rounding may differ by an ulp
        if theirs.grad is None:
            assert ours.grad is None
        else:
            torch.testing.assert_close(dense(ours.grad).cpu(), dense(theirs.grad))


def test_convert_sets_sparse_and_options_and_is_idempotent():
    model = Tables()
    first = sparsemb.convert(model, sparse=True, bounds_check="none", scale_grad_by_freq=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    second = sparsemb.convert(model, sparse=True, bounds_check="none", scale_grad_by_freq=True)
    assert len(first.replaced) == len(TABLES) and second.replaced == []
    assert sorted(second.kept) == sorted(TABLES)
    for name in TABLES:
        module = model.get_submodule(name)
        assert module.sparse and module.scale_grad_by_freq and module.bounds_check == "none"
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    model(random_indices(30, (3, 4))).backward()
    assert model.plain.weight.grad.is_sparse and model.frozen.weight.grad is None


def test_convert_of_a_bare_table_and_of_sparse_none():
    table = nn.Embedding(10, 4, sparse=True)
    report = sparsemb.convert(table)
    assert report.replaced == [""] and type(table) is sparsemb.Embedding and table.sparse
    sparsemb.convert(table, sparse=False)
    assert not table.sparse


def test_tied_table_gets_a_dense_gradient_with_a_warning():
    torch.manual_seed(0)
    model = TinyLM()
    wte = model.wte.weight
    with pytest.warns(UserWarning, match=r"'wte' is tied to \['lm_head.weight'\]"):
        report = sparsemb.convert(model, sparse=True)
    assert report.tied == {"wte": ["lm_head.weight"]} and report.dense_because_tied == ["wte"]
    assert model.lm_head.weight is wte and model.wte.weight is wte
    assert not model.wte.sparse and model.wpe.sparse


def test_tied_raise_names_the_tie_and_changes_nothing():
    model = TinyLM()
    with pytest.raises(ValueError, match=r"'wte' is tied to \['lm_head.weight'\].*tied='dense'"):
        sparsemb.convert(model, sparse=True, tied="raise")
    assert type(model.wte) is nn.Embedding and type(model.wpe) is nn.Embedding
    assert not model.wpe.sparse


class Both:
    def __init__(self, opts):
        self.opts = opts

    def zero_grad(self):
        for opt in self.opts:
            opt.zero_grad()

    def step(self):
        for opt in self.opts:
            opt.step()


def train(model, opt, steps=3):
    g = torch.Generator().manual_seed(5)
    for _ in range(steps):
        ids = torch.randint(0, 40, (4, 7), generator=g)
        opt.zero_grad()
        lm_loss(model, ids).backward()
        opt.step()


def test_converted_tied_model_trains_like_torch():
    """SparseAware on the converted GPT-2-like model: the tied table on the dense side, the
    position table on sparsemb's SparseAdam, compared with the unconverted twin trained by
    torch's SparseAdam (position table, sparse=True) and Adam (the rest)."""
    torch.manual_seed(0)
    ref = TinyLM()
    model = copy.deepcopy(ref)
    with pytest.warns(UserWarning, match="tied"):
        sparsemb.convert(model, sparse=True)
    ref.wpe.sparse = True
    rest = [p for name, p in ref.named_parameters() if name != "wpe.weight"]
    ref_opts = [torch.optim.SparseAdam([ref.wpe.weight], lr=1e-2), torch.optim.Adam(rest, lr=1e-2)]
    train(ref, Both(ref_opts))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model is already untied: SparseAware warns nothing
        opt = sparsemb.optim.SparseAware(model, sparse="adam", dense=torch.optim.Adam, lr=1e-2)
    assert [p for g in opt.sparse_optimizer.param_groups for p in g["params"]] == [
        model.wpe.weight
    ]
    train(model, opt)
    assert model.wpe.weight.grad.is_sparse and not model.wte.weight.grad.is_sparse
    for (name, ours), theirs in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5, msg=name)


def tied_sparse_model():
    torch.manual_seed(0)
    model = TinyLM()
    sparsemb.convert(model, sparse=False)
    model.wte.sparse = True  # the user's own sparse table, tied to lm_head
    return model


def test_sparse_aware_routes_a_tied_sparse_table_to_the_dense_side():
    ref, model = tied_sparse_model(), tied_sparse_model()
    ref.wte.sparse = False
    with pytest.warns(UserWarning, match=r"'wte.weight' is tied to \['lm_head.weight'\]"):
        opt = sparsemb.optim.SparseAware(model, sparse="adam", dense=torch.optim.Adam, lr=1e-2)
    assert opt.sparse_optimizer is None and not model.wte.sparse
    train(model, opt)
    train(ref, torch.optim.Adam(ref.parameters(), lr=1e-2))
    for ours, theirs in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_sparse_aware_tied_raise_changes_nothing():
    model = tied_sparse_model()
    with pytest.raises(ValueError, match=r"'wte.weight' is tied to \['lm_head.weight'\]"):
        sparsemb.optim.SparseAware(model, tied="raise")
    assert model.wte.sparse
    with pytest.raises(ValueError, match="tied must be"):
        sparsemb.optim.SparseAware(model, tied="ignore")
    with pytest.raises(ValueError, match="learning rate"):  # the dense optimizer refuses
        sparsemb.optim.SparseAware(model, dense=torch.optim.Adam, dense_options={"lr": -1.0})
    assert model.wte.sparse


def shared_storage_model():
    """The pitfall of the issue: from_pretrained on a tied weight makes a second Parameter."""
    model = TinyLM()
    model.wte = sparsemb.Embedding.from_pretrained(model.lm_head.weight, freeze=False, sparse=True)
    return model


def test_shared_storage_is_an_error_in_convert_and_sparse_aware():
    model = shared_storage_model()
    assert model.wte.weight is not model.lm_head.weight
    with pytest.raises(ValueError, match=r"'wte.weight' shares its storage.*'lm_head.weight'"):
        sparsemb.convert(model, sparse=True)
    with pytest.raises(ValueError, match=r"'wte.weight' shares its storage.*'lm_head.weight'"):
        sparsemb.optim.SparseAware(model)
    params = [{"params": [model.wte.weight], "sparse": True}, {"params": [model.lm_head.weight]}]
    with pytest.raises(ValueError, match="same storage"):
        sparsemb.optim.SparseAware(params)


def test_dense_gradient_error_explains_ties():
    model = tied_sparse_model()
    opt = sparsemb.optim.SparseAdam([model.wte.weight])
    lm_loss(model, random_indices(40, (2, 5))).backward()
    assert not model.wte.weight.grad.is_sparse  # sparse lookup + dense output layer: dense
    with pytest.raises(ValueError, match="dense gradient for .*tied to an output layer"):
        opt.step()


class Scaled(nn.Embedding):
    def forward(self, input):
        return super().forward(input) * 2.0


def test_unknown_subclasses_and_skip_are_left_alone():
    model = nn.ModuleDict({"scaled": Scaled(10, 4), "a": nn.Embedding(10, 4),
                           "b": nn.Embedding(10, 4)})
    report = sparsemb.convert(model, skip=("b",))
    assert report.replaced == ["a"] and list(report.skipped) == ["scaled"]
    assert type(model["scaled"]) is Scaled and type(model["b"]) is nn.Embedding
    assert "replaced a" in str(report)


def test_embedding_bag_is_converted():
    model = nn.ModuleDict({"bag": nn.EmbeddingBag(10, 4, mode="sum", padding_idx=1)})
    weight = model["bag"].weight
    report = sparsemb.convert(model, sparse=True)
    ref = nn.EmbeddingBag(10, 4, mode="sum", padding_idx=1)
    with torch.no_grad():
        ref.weight.copy_(weight)
    assert report.replaced == ["bag"] and type(model["bag"]) is sparsemb.EmbeddingBag
    assert model["bag"].weight is weight and model["bag"].sparse and model["bag"].padding_idx == 1
    idx, offsets = torch.tensor([1, 2, 3, 3, 9]), torch.tensor([0, 2])
    torch.testing.assert_close(model["bag"](idx, offsets), ref(idx, offsets))


def test_converted_bag_takes_fused_backward_through_sparse_aware():
    model = nn.Sequential(nn.EmbeddingBag(50, 4, mode="sum", sparse=True), nn.Linear(4, 1))
    sparsemb.convert(model)
    sparsemb.optim.SparseAware(model, sparse="adam", fused_backward=True, lr=0.1)
    before = model[0].weight.detach().clone()
    model(torch.tensor([[1, 2], [3, 3]])).sum().backward()
    changed = (model[0].weight != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [1, 2, 3] and model[0].weight.grad is None  # updated inside backward


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"sparse": "yes"}, TypeError),
        ({"tied": "keep"}, ValueError),
        ({"max_norm": -1.0}, ValueError),
        ({"bounds_check": "maybe"}, ValueError),
        ({"padding_idx": 3}, TypeError),
    ],
)
def test_bad_arguments_raise_before_anything_changes(kwargs, error):
    model = Tables()
    with pytest.raises(error):
        sparsemb.convert(model, **kwargs)
    assert all(type(model.get_submodule(n)) is nn.Embedding for n in TABLES)
    with pytest.raises(TypeError, match="nn.Module"):
        sparsemb.convert(torch.zeros(3))
