"""The EmbeddingBag benchmark groups compute the same thing with every provider: one step from
the same weights gives sparsemb's output (forward groups) or weights (step groups)."""

import pytest
import torch

from bench.harness import bag_providers, providers
from bench.harness import workloads as wl


@pytest.mark.parametrize("group_name", bag_providers.BAG_GROUPS)
def test_bag_providers_agree(group_name):
    inputs = wl.make_inputs(wl.Workload(500, 8, 300, "zipf"), "cpu")
    group = providers.GROUPS[group_name]
    results = {}
    for provider in group.providers:
        try:
            case = provider.build(inputs)
        except providers.Unavailable:
            continue
        out = case.step()
        weight = case.params[0].detach().float()
        results[provider.name] = (out.detach().float() if out is not None else None, weight)
    ours = results.pop(group.ours.name)
    assert results, f"{group_name}: no peer ran"
    if group.kind == "step":
        assert not torch.equal(ours[1], inputs.weight.float())
    else:
        assert ours[0].shape == (bag_providers.BAGS, 8)
    for name, (out, weight) in results.items():
        if out is not None:
            torch.testing.assert_close(out, ours[0], atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(weight, ours[1], atol=1e-5, rtol=1e-4, msg=name)
