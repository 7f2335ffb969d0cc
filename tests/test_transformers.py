"""HuggingFace Trainer with a converted model (needs the `hf` extra: transformers, accelerate).

Tiny randomly initialised configs only: nothing is downloaded."""

import copy

import pytest
import torch

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

import sparsemb  # noqa: E402
import sparsemb.optim  # noqa: E402
from sparsemb.integrations.transformers import SparseTrainer, clip_sparse_grads  # noqa: E402

VOCAB = 500


class Tokens(torch.utils.data.Dataset):
    def __len__(self):
        return 24

    def __getitem__(self, i):
        ids = torch.randint(0, VOCAB, (16,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids.clone()}


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def args(tmp_path, **overrides):
    options = dict(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, report_to=[],
        use_cpu=True, logging_steps=1, save_strategy="no", max_grad_norm=0.5, seed=3,
    )
    return transformers.TrainingArguments(**{**options, **overrides})


def norms(trainer):
    return [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]


def test_trainer_trains_a_converted_gpt2_like_torch(tmp_path):
    """Converted GPT-2 (position table sparse, token table tied hence dense) on SparseAware
    with SGD, clipped by the default path, against the unconverted model on torch SGD: the
    same clipped norms and weights (SGD touches the same rows either way)."""
    ref = tiny_gpt2()
    model = copy.deepcopy(ref)
    with pytest.warns(UserWarning, match="tied"):
        report = sparsemb.convert(model, sparse=True)
    assert report.replaced == ["transformer.wte", "transformer.wpe"]
    assert model.lm_head.weight is model.transformer.wte.weight
    opt = sparsemb.optim.SparseAware(model, sparse="sgd", dense=torch.optim.SGD, lr=0.1)
    trainer = SparseTrainer(model=model, args=args(tmp_path / "a"), train_dataset=Tokens(),
                            optimizers=(opt, None))
    trainer.train()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ref_trainer = transformers.Trainer(model=ref, args=args(tmp_path / "b"),
                                       train_dataset=Tokens(), optimizers=(ref_opt, None))
    ref_trainer.train()
    sparse_side = [p for g in opt.sparse_optimizer.param_groups for p in g["params"]]
    assert model.transformer.wpe.sparse and sparse_side == [model.transformer.wpe.weight]
    assert len(norms(trainer)) == 4 and max(norms(trainer)) > 0.5  # clipping was active
    assert norms(trainer) == pytest.approx(norms(ref_trainer), rel=1e-4)
    for (name, ours), theirs in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5, msg=name)


def test_sparse_gradients_reach_the_clipping(tmp_path):
    model = tiny_gpt2()
    with pytest.warns(UserWarning, match="tied"):
        sparsemb.convert(model, sparse=True)
    opt = sparsemb.optim.SparseAware(model, sparse="adam", lr=1e-3)
    trainer = SparseTrainer(model=model, args=args(tmp_path, max_steps=1),
                            train_dataset=Tokens(), optimizers=(opt, None))
    seen = []
    inner = trainer.accelerator.clip_grad_norm_

    def spy(parameters, max_norm, norm_type=2):
        params = list(parameters)
        seen.extend(p.grad.is_sparse for p in params if p.grad is not None)
        return inner(params, max_norm, norm_type)

    trainer.accelerator.clip_grad_norm_ = spy
    trainer.train()
    assert any(seen) and not all(seen)  # the position table's gradient was sparse, others dense


def test_clip_sparse_grads_is_idempotent_and_checks_its_argument(tmp_path):
    model = tiny_gpt2()
    trainer = transformers.Trainer(model=model, args=args(tmp_path, max_steps=1),
                                   train_dataset=Tokens())
    clip_sparse_grads(trainer.accelerator)
    once = trainer.accelerator.clip_grad_norm_
    clip_sparse_grads(trainer.accelerator)
    assert trainer.accelerator.clip_grad_norm_ is once
    with pytest.raises(TypeError, match="Accelerator"):
        clip_sparse_grads(trainer)


def test_llama_with_a_sparse_table_compiles_without_graph_breaks():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    assert sparsemb.convert(model, sparse=True).replaced == ["model.embed_tokens"]
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(lambda i: model(input_ids=i, labels=i).loss)(ids)
    finally:
        torch._dynamo.reset()
    assert explained.graph_break_count == 0, explained.break_reasons
