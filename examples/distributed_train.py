"""A sharded embedding table and a DDP dense head, trained with torchrun on synthetic data.

    torchrun --standalone --nproc-per-node 2 examples/distributed_train.py      # CPU: gloo
    torchrun --standalone --nproc-per-node 8 examples/distributed_train.py      # GPUs: NCCL

Each rank reads its own batches; the table's rows are split over the ranks; a DCP checkpoint
of model and optimizer state is written at the end (loadable at any world size).
"""

import argparse
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import sparsemb.optim
from sparsemb.distributed import ShardedEmbedding, sharded_state_dict


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--checkpoint", default="/tmp/sparsemb-sharded-ckpt")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(rank)
    model = nn.ModuleDict({
        "emb": ShardedEmbedding(args.rows, args.dim, sparse=True, device=device,
                                grad_reduction="mean"),  # DDP averages: so does the table
        "head": DDP(nn.Linear(args.dim, 1).to(device)),
    })
    opt = sparsemb.optim.SparseAware(model, sparse="rowwise_adagrad", dense=torch.optim.AdamW,
                                     lr=0.05)
    truth = torch.randn(args.rows, generator=torch.Generator().manual_seed(0)).to(device)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
    for step in range(args.steps):
        idx = torch.randint(0, args.rows, (args.batch,), generator=data).to(device)
        opt.zero_grad()
        pred = model["head"](model["emb"](idx)).squeeze(-1)
        loss = nn.functional.mse_loss(pred, truth[idx])
        loss.backward()
        opt.step()
        if rank == 0 and step % 10 == 0:
            print(f"step {step}: loss {loss.item():.4f} (rank 0's batch)", flush=True)
    dcp.save(sharded_state_dict(model, opt), checkpoint_id=args.checkpoint)
    if rank == 0:
        print(f"checkpoint: {args.checkpoint}")
    del model, opt  # release DDP before destroying its group (gloo hung at exit otherwise)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
