"""sparsemb.optim under hostile input: bad gradient rows, graphs that saved the weight, strided
weight and state, checkpoints of another rule, a failing dense side, every torch lr scheduler.

The rule is the same everywhere: a call either does its whole job (as torch would) or raises a
clear Python exception with every weight, state tensor and param group as it was. Tests taking
the ``backend`` fixture run on the pure-PyTorch path and on the Triton kernels (under the
interpreter on CPU).
"""

import copy
import itertools

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

import sparsemb
import sparsemb.optim as so

V, D = 23, 6

RULES = {
    "sgd": lambda p: so.SparseSGD(p, lr=0.1, weight_decay=0.1),
    "adagrad": lambda p: so.SparseAdagrad(p, lr=0.1, lr_decay=0.01, weight_decay=0.1),
    "rowwise_adagrad": lambda p: so.RowWiseAdagrad(p, lr=0.1, weight_decay=0.1),
    "adam": lambda p: so.SparseAdam(p, lr=0.1, betas=(0.8, 0.99)),
    "adamw": lambda p: so.SparseAdamW(p, lr=0.1, weight_decay=0.1),
}


def sparse_grad(rows, values, shape=None, coalesced=True):
    rows = torch.as_tensor(rows, device=values.device)
    shape = shape or (V, values.shape[1])
    return torch.sparse_coo_tensor(rows[None], values, shape, is_coalesced=coalesced,
                                   check_invariants=False)  # bad rows on purpose


def snapshot(opt):
    """Deep copies of every tensor and option the optimizer holds, to compare after a failure."""
    state = {
        id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
        for p, s in opt.state.items()
    }
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    params = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    return state, copy.deepcopy(groups), params


def assert_unchanged(opt, before):
    state, groups, params = before
    now_state, now_groups, now_params = snapshot(opt)
    assert now_groups == groups
    assert now_state.keys() == state.keys()
    for key, entry in state.items():
        assert now_state[key].keys() == entry.keys()
        for name, value in entry.items():
            other = now_state[key][name]
            if isinstance(value, torch.Tensor):
                assert torch.equal(other, value), name
            else:
                assert other == value, name
    for a, b in zip(now_params, params, strict=True):
        assert torch.equal(a, b)


def padded_table(device, dtype=torch.float32, rows=V, dim=D, seed=0):
    """(buffer with a guard row above and below, a Parameter viewing its middle rows): a write to
    row -1 or row V of the table lands in a guard row instead of outside the allocation."""
    gen = torch.Generator().manual_seed(seed)
    buffer = torch.randn(rows + 2, dim, generator=gen).to(device, dtype)
    return buffer, nn.Parameter(buffer[1:-1])


# ----- rows outside the table (issue 9, item 2)


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("bad", [-1, V, 10**6])
@pytest.mark.parametrize("coalesced", [True, False])
def test_gradient_rows_outside_the_table_raise_before_any_write(rule, bad, coalesced, backend):
    dev = backend.device
    good = nn.Parameter(torch.randn(V, D, device=dev))
    buffer, table = padded_table(dev)
    opt = RULES[rule]([("tables.good", good), ("tables.bad", table)])
    gen = torch.Generator().manual_seed(1)
    good.grad = sparse_grad([1, 2], torch.randn(2, D, generator=gen).to(dev))
    table.grad = sparse_grad([0, 4], torch.randn(2, D, generator=gen).to(dev))
    opt.step()  # state exists and is not trivial
    before, buffer_before = snapshot(opt), buffer.clone()
    good.grad = sparse_grad([2, 3], torch.randn(2, D, generator=gen).to(dev))
    rows = [4, bad, 0] if not coalesced else sorted([0, 4, bad])
    table.grad = sparse_grad(rows, torch.randn(3, D, generator=gen).to(dev), coalesced=coalesced)
    with pytest.raises(IndexError, match=rf"{bad}.*'tables.bad'.*\[0, {V}\)"):
        opt.step()
    assert_unchanged(opt, before)
    assert torch.equal(buffer, buffer_before)  # the guard rows too


KERNEL_CASES = {  # launcher -> (state dims beyond the rows: (dim,) or (), scalars)
    "sgd": ([], dict(neg_lr=-0.1, weight_decay=0.05)),
    "adagrad": ([True], dict(neg_clr=-0.1, eps=1e-10, weight_decay=0.05)),
    "rowwise_adagrad": ([False], dict(neg_lr=-0.1, eps=1e-10, weight_decay=0.05)),
    "adam": ([True, True], dict(one_minus_beta1=0.1, one_minus_beta2=0.01, eps=1e-8,
                                neg_step_size=-0.01, decay=0.99)),
}


@pytest.mark.parametrize("rule", sorted(KERNEL_CASES))
@pytest.mark.parametrize("dim", [3, 17])
def test_kernels_skip_rows_outside_the_table(rule, dim, triton_backend):
    """Defence in depth for callers that skip the check: rows -1 and V go nowhere (the guard
    rows around the table and its state stay as they were), the rows in range are updated as
    the CPU rule updates them alone."""
    from sparsemb._backend import kernel_module
    from sparsemb.torch_backend import optim as torch_rules

    dev = triton_backend.device
    per_column, scalars = KERNEL_CASES[rule]
    values = torch.randn(4, dim, generator=torch.Generator().manual_seed(9)).to(dev)
    results = []
    for module, rows, vals in ((kernel_module("optim"), [-1, 2, 5, V], values),
                               (torch_rules, [2, 5], values[1:3])):
        gen = torch.Generator().manual_seed(0)
        buffer = torch.randn(V + 2, dim, generator=gen).to(dev)
        states = [torch.rand((V + 2, dim) if full else (V + 2,), generator=gen).to(dev)
                  for full in per_column]
        getattr(module, f"{rule}_update_")(
            buffer[1:-1], torch.tensor(rows, device=dev), vals, *[s[1:-1] for s in states],
            sr_seed=None, **scalars,
        )
        results.append((buffer, states))
    (w_ker, s_ker), (w_ref, s_ref) = results
    torch.testing.assert_close(w_ker, w_ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(s_ker, s_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [-1, V])
def test_fused_update_never_writes_rows_outside_the_table(bad, backend):
    """The fused-backward entry point: on CPU tensors the rows are checked (IndexError, nothing
    written); on a GPU the check would cost a sync in backward, so the kernels skip the row."""
    dev = backend.device
    buffer, table = padded_table(dev)
    opt = so.SparseAdam([table], lr=0.1)
    before = buffer.clone()
    rows = torch.tensor(sorted([1, bad]), device=dev)
    values = torch.randn(2, D, device=dev)
    if dev.type == "cpu":
        with pytest.raises(IndexError, match=str(bad)):
            opt.fused_update(table, rows, values)
        assert torch.equal(buffer, before) and not opt.state[table]
    else:
        opt.fused_update(table, rows, values)
        changed = (buffer != before).any(dim=1).nonzero().flatten().tolist()
        assert changed == [2]  # table row 1 only


# ----- the autograd version counter (issue 9, item 3)


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("fused", [False, True])
def test_step_bumps_the_version_of_what_it_writes(rule, fused, backend):
    """A graph that saved the weight before the step (tied output weights: logits = h @ W^T)
    cannot backward through the stale value afterwards, on either backend, as with torch."""
    dev = backend.device
    table = nn.Parameter(torch.randn(V, D, device=dev))
    opt = RULES[rule]([table])
    rows, values = torch.tensor([1, 4], device=dev), torch.randn(2, D, device=dev)
    opt.fused_update(table, rows, values)  # the state exists before the versions are read
    h = torch.randn(3, D, device=dev, requires_grad=True)
    loss = (h @ table.t()).square().sum()
    versions = [t._version for t in (table, *opt.state[table].values())
                if isinstance(t, torch.Tensor)]
    if fused:
        opt.fused_update(table, rows, values)
    else:
        table.grad = sparse_grad(rows, values)
        opt.step()
    after = [t._version for t in (table, *opt.state[table].values())
             if isinstance(t, torch.Tensor)]
    assert all(a > b for a, b in zip(after, versions, strict=True))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# ----- strided weight and state (issue 9, item 4)


TORCH_TWINS = {
    "sgd": (lambda p: so.SparseSGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "adagrad": (lambda p: so.SparseAdagrad(p, lr=0.1, lr_decay=0.01),
                lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01)),
    "rowwise_adagrad": (lambda p: so.RowWiseAdagrad(p, lr=0.1, weight_decay=0.1), None),
    "adam": (lambda p: so.SparseAdam(p, lr=0.1, betas=(0.8, 0.99)),
             lambda p: torch.optim.SparseAdam(p, lr=0.1, betas=(0.8, 0.99))),
    "adamw": (lambda p: so.SparseAdamW(p, lr=0.1, weight_decay=0.1), None),
}


def column_major(t):
    """The same values with transposed strides (what a checkpoint or a .t() can hand over)."""
    return t.t().contiguous().t() if t.dim() == 2 else t


def embedding_steps(tables, opts, steps, seed):
    """Train torch nn.Embedding(sparse=True) lookups of each weight on the same data."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, V, (9,), generator=gen)
        up = torch.randn(9, D, generator=gen)
        for weight, opt in zip(tables, opts, strict=True):
            opt.zero_grad()
            (nn.functional.embedding(idx.to(weight.device), weight, sparse=True)
             * up.to(weight.device)).sum().backward()
            opt.step()


@pytest.mark.parametrize("rule", sorted(TORCH_TWINS))
def test_strided_weight_and_loaded_strided_state(rule, backend):
    """A column-major weight, and state loaded from a checkpoint in column-major layout (and in
    a strided slice), update exactly as the contiguous ones, and as torch's optimizers."""
    dev = backend.device
    make_ours, make_torch = TORCH_TWINS[rule]
    init = torch.randn(V, D, generator=torch.Generator().manual_seed(0))
    plain = nn.Parameter(init.clone().to(dev))
    strided = nn.Parameter(column_major(init.clone().to(dev)))
    assert not strided.is_contiguous()
    opt_plain, opt_strided = make_ours([plain]), make_ours([strided])
    tables, opts = [plain, strided], [opt_plain, opt_strided]
    if make_torch is not None:
        tables.append(nn.Parameter(init.clone().to(dev)))
        opts.append(make_torch([tables[-1]]))
    embedding_steps(tables, opts, 3, seed=1)

    saved = opt_plain.state_dict()
    for entry in saved["state"].values():
        for name, value in list(entry.items()):
            if isinstance(value, torch.Tensor):
                entry[name] = column_major(value.clone())
    opt_strided.load_state_dict(saved)
    state = opt_strided.state[strided]
    for name, value in list(state.items()):
        if isinstance(value, torch.Tensor) and value.dim() == 1:  # every other element of a buffer
            state[name] = torch.zeros(2 * V, device=value.device)[::2].copy_(value)
    assert all(v.is_contiguous() == (v.dim() == 0) for v in state.values()
               if isinstance(v, torch.Tensor))
    embedding_steps(tables, opts, 4, seed=2)
    torch.testing.assert_close(strided, plain, rtol=1e-6, atol=1e-7)
    for name, value in opt_plain.state[plain].items():
        torch.testing.assert_close(opt_strided.state[strided][name], value, rtol=1e-6, atol=1e-7)
    if make_torch is not None:
        torch.testing.assert_close(strided, tables[-1], rtol=1e-5, atol=1e-6)


# ----- checkpoints of another rule or another table (issue 9, item 12)


SHAPES = [(V, D), (V, D + 1), (V + 2, D), (V, 1)]


@pytest.mark.parametrize("src_rule, dst_rule", itertools.product(sorted(RULES), repeat=2))
@pytest.mark.parametrize("stepped", [True, False])
def test_load_state_dict_of_another_rule_or_shape(src_rule, dst_rule, stepped):
    """Loading either succeeds and the next step is right (same rule; same table, or a rule
    with no shaped state), or raises ValueError with state and param groups unchanged."""
    gen = torch.Generator().manual_seed(5)
    for src_shape, dst_shape in itertools.product(SHAPES, repeat=2):
        src = nn.Parameter(torch.randn(src_shape, generator=gen))
        dst = nn.Parameter(torch.randn(dst_shape, generator=gen))
        opt_src, opt_dst = RULES[src_rule]([src]), RULES[dst_rule]([dst])
        for group in opt_src.param_groups:
            group["lr"] = 0.3  # a value the destination does not have
        if stepped:
            src.grad = sparse_grad([0, 2], torch.randn(2, src_shape[1], generator=gen),
                                   shape=src_shape)
            opt_src.step()
        dst.grad = sparse_grad([1], torch.randn(1, dst_shape[1], generator=gen), shape=dst_shape)
        opt_dst.step()
        before = snapshot(opt_dst)
        try:
            opt_dst.load_state_dict(opt_src.state_dict())
        except ValueError:
            assert_unchanged(opt_dst, before)
            continue
        label = f"{src_rule} {src_shape} -> {dst_rule} {dst_shape}"
        assert src_rule == dst_rule, label
        assert opt_dst.param_groups[0]["lr"] == 0.3
        if src_shape != dst_shape:  # accepted only where the state fits the other table
            shapes = {k: v.shape for k, v in before[0][id(dst)].items() if torch.is_tensor(v)}
            loaded = {k: v.shape for k, v in opt_dst.state[dst].items() if torch.is_tensor(v)}
            assert loaded == shapes or not loaded, label
            dst.grad = sparse_grad([0], torch.randn(1, dst_shape[1], generator=gen),
                                   shape=dst_shape)
            opt_dst.step()
            continue
        with torch.no_grad():
            dst.copy_(src)
        grad = torch.randn(2, dst_shape[1], generator=gen)
        for p, opt in ((src, opt_src), (dst, opt_dst)):
            p.grad = sparse_grad([1, 2], grad.clone(), shape=dst_shape)
            opt.step()
        assert torch.equal(dst, src), label
        for name, value in opt_src.state[src].items():
            assert torch.equal(torch.as_tensor(opt_dst.state[dst][name]), torch.as_tensor(value))


def test_load_state_dict_rejects_a_state_without_its_step():
    p = nn.Parameter(torch.randn(V, D))
    opt = so.SparseAdam([p])
    p.grad = sparse_grad([1], torch.randn(1, D))
    opt.step()
    saved = opt.state_dict()
    del saved["state"][0]["step"]
    before = snapshot(opt)
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(saved)
    assert_unchanged(opt, before)


# ----- other calls that failed half way


def test_step_checks_every_table_state_before_writing_the_first():
    first, second = nn.Parameter(torch.randn(V, D)), nn.Parameter(torch.randn(V, D))
    opt = so.SparseAdam([first, second])
    for p in (first, second):
        p.grad = sparse_grad([1], torch.randn(1, D))
    opt.step()
    del opt.state[second]["step"]
    before = snapshot(opt)
    with pytest.raises(ValueError, match="step"):
        opt.step()
    assert_unchanged(opt, before)


def test_fused_update_checks_dtypes_before_writing():
    p = nn.Parameter(torch.randn(V, D))
    opt = so.SparseAdagrad([p])
    with pytest.raises(ValueError, match="rows"):
        opt.fused_update(p, torch.tensor([1.0, 2.0]), torch.randn(2, D))
    with pytest.raises(ValueError, match="values"):
        opt.fused_update(p, torch.tensor([1, 2]), torch.ones(2, D, dtype=torch.int64))
    assert not opt.state[p]


def test_enable_fused_backward_with_a_foreign_parameter_hooks_nothing():
    ours, stranger = sparsemb.Embedding(V, D, sparse=True), nn.Parameter(torch.randn(V, D))
    opt = so.SparseSGD(ours.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not in this optimizer"):
        opt.enable_fused_backward([ours.weight, stranger])
    ours(torch.tensor([1, 2])).sum().backward()
    assert ours.weight.grad is not None  # no hook was left on the first parameter


# ----- SparseAware all or nothing (issue 9, item 13)


class Model(nn.Module):
    def __init__(self, device="cpu"):
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.emb = sparsemb.Embedding(V, D, sparse=True,
                                      _weight=torch.randn(V, D, generator=gen))
        self.lin = nn.Linear(D, 1)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(1, D, generator=gen))
            self.lin.bias.fill_(0.1)
        self.to(device)

    def forward(self, idx):
        return self.lin(self.emb(idx)).square().mean()


class FailingSGD(torch.optim.SGD):
    def step(self, closure=None):
        raise RuntimeError("dense step failed")


@pytest.mark.parametrize("rule", sorted(RULES))
def test_wrapper_dense_failure_leaves_the_tables_untouched(rule, backend):
    model = Model(backend.device)
    opt = so.SparseAware(model, sparse=rule, dense=torch.optim.SGD, lr=0.1)
    idx = torch.tensor([[1, 2, 2, 7]], device=backend.device)
    model(idx).backward()
    opt.step()
    opt.dense_optimizer.__class__ = FailingSGD
    opt.zero_grad()
    model(idx).backward()
    before = snapshot(opt.sparse_optimizer)
    with pytest.raises(RuntimeError, match="dense step failed"):
        opt.step()
    assert_unchanged(opt.sparse_optimizer, before)


def test_wrapper_load_state_dict_is_all_or_nothing():
    model, other = Model(), Model()
    opt = so.SparseAware(model, sparse="adam", dense=torch.optim.SGD, lr=0.1)
    target = so.SparseAware(other, sparse="adam", dense=torch.optim.SGD, lr=0.2)
    for o, m in ((opt, model), (target, other)):
        m(torch.tensor([[1, 2]])).backward()
        o.step()
    saved = opt.state_dict()
    saved["dense"]["param_groups"].append(copy.deepcopy(saved["dense"]["param_groups"][0]))
    before_sparse = snapshot(target.sparse_optimizer)
    before_dense = snapshot(target.dense_optimizer)
    with pytest.raises(ValueError):
        target.load_state_dict(saved)
    assert_unchanged(target.sparse_optimizer, before_sparse)
    assert_unchanged(target.dense_optimizer, before_dense)


# ----- every torch lr scheduler drives SparseAware (issue 9, item 14)


def schedulers(cycle_momentum):
    """name -> callable(optimizer) building the scheduler; ``cycle_momentum`` is False for an
    optimizer without momentum or betas (torch's own schedulers refuse those)."""
    return {
        "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda e: 0.9**e),
        "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lambda e: 0.8),
        "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
        "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[1, 3], gamma=0.5),
        "ConstantLR": lambda o: lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2),
        "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=3),
        "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.7),
        "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o, total_iters=4, power=2.0),
        "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=3),
        "ChainedScheduler": lambda o: lr_scheduler.ChainedScheduler(
            [lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
             lr_scheduler.ExponentialLR(o, gamma=0.9)]),
        "SequentialLR": lambda o: lr_scheduler.SequentialLR(
            o, [lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2),
                lr_scheduler.ExponentialLR(o, gamma=0.9)], milestones=[2]),
        "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.5),
        "CyclicLR": lambda o: lr_scheduler.CyclicLR(
            o, base_lr=0.01, max_lr=0.1, step_size_up=2, cycle_momentum=cycle_momentum),
        "CyclicLR-no-momentum": lambda o: lr_scheduler.CyclicLR(
            o, base_lr=0.01, max_lr=0.1, step_size_up=2, cycle_momentum=False),
        "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(
            o, max_lr=0.1, total_steps=8, cycle_momentum=cycle_momentum),
        "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(
            o, T_0=2),
    }


def has_momentum(opt):
    return "momentum" in opt.defaults or "betas" in opt.defaults


PAIRS = [  # (sparse rule, dense optimizer, its options)
    ("adam", torch.optim.SGD, {"momentum": 0.9}),
    ("sgd", torch.optim.AdamW, {}),
    ("adamw", torch.optim.Adam, {}),
    ("rowwise_adagrad", torch.optim.SGD, {}),
]


@pytest.mark.parametrize("name", sorted(schedulers(True)))
@pytest.mark.parametrize("pair", range(len(PAIRS)), ids=[p[0] for p in PAIRS])
def test_every_scheduler_drives_the_wrapper_as_it_drives_each_side_alone(name, pair):
    sparse, dense, options = PAIRS[pair]
    wrapped, split = Model(), Model()
    opt = so.SparseAware(wrapped, sparse=sparse, dense=dense, lr=0.05, dense_options=options)
    alone = [so.SPARSE_RULES[sparse]([split.emb.weight], lr=0.05),
             dense(list(split.lin.parameters()), lr=0.05, **options)]
    sched = schedulers(True)[name](opt)
    scheds = [schedulers(has_momentum(o))[name](o) for o in alone]
    gen = torch.Generator().manual_seed(3)
    for _ in range(6):
        idx = torch.randint(0, V, (2, 5), generator=gen)
        for model, opts, steppers in ((wrapped, [opt], [sched]), (split, alone, scheds)):
            for o in opts:
                o.zero_grad()
            loss = model(idx)
            loss.backward()
            for o in opts:
                o.step()
            for s in steppers:
                s.step(loss.item()) if name == "ReduceLROnPlateau" else s.step()
        groups = [g for o in alone for g in o.param_groups]
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]
        for ours, theirs in zip(opt.param_groups, groups, strict=True):
            for key in ("momentum", "betas"):
                if key in theirs:
                    assert ours[key] == theirs[key], key
        for a, b in zip(wrapped.parameters(), split.parameters(), strict=True):
            assert torch.equal(a, b)


def test_one_cycle_momentum_reaches_a_sparse_adam_group():
    model = Model()
    opt = so.SparseAware(model, sparse="adam", dense=torch.optim.SGD, lr=0.05)
    lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=8)
    sparse_group = opt.sparse_optimizer.param_groups[0]
    dense_group = opt.dense_optimizer.param_groups[0]
    assert sparse_group["betas"][0] == 0.95 and sparse_group["betas"][1] == 0.999
    assert "momentum" not in sparse_group  # the rule's own dict keeps its own keys
    assert "betas" not in dense_group and dense_group["momentum"] == 0.95


@pytest.mark.parametrize("sparse", ["sgd", "adam"])
def test_resume_under_one_cycle_is_bit_identical(sparse):
    """The scheduler's keys (initial_lr, max_momentum, ...) travel in the checkpoint and load
    back into the rule; momentum cycling resumes where it was."""
    data = [torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(i))
            for i in range(6)]

    def build(model):
        opt = so.SparseAware(model, sparse=sparse, dense=torch.optim.SGD, lr=0.05)
        return opt, lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=8)

    def run(model, opt, sched, batches):
        for idx in batches:
            opt.zero_grad()
            model(idx).backward()
            opt.step()
            sched.step()

    model = Model()
    opt, sched = build(model)
    run(model, opt, sched, data[:3])
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict()))
    run(model, opt, sched, data[3:])
    resumed = Model()
    opt2, sched2 = build(resumed)
    resumed.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    run(resumed, opt2, sched2, data[3:])
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    def options(o):
        return [{k: v for k, v in g.items() if k != "params"} for g in o.param_groups]

    assert options(opt) == options(opt2)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_fused_update_takes_int32_rows(rule, backend):
    """fused_update accepts int32 rows (as documented by its check): the same update as int64
    rows, on either backend (the CPU path's index_copy_ takes int64 only)."""
    dev = backend.device
    start = torch.randn(V, D, device=dev)
    rows, values = torch.tensor([1, 4, 9], device=dev), torch.randn(3, D, device=dev)
    results = []
    for dtype in (torch.int64, torch.int32):
        table = nn.Parameter(start.clone())
        opt = RULES[rule]([table])
        for _ in range(2):
            opt.fused_update(table, rows.to(dtype), values.clone())
        results.append(table.detach())
    assert torch.equal(results[0], results[1])
