"""Tensor-parallel training: a ColwiseParallel vocabulary head feeding ls_xp's loss.

    torchrun --nproc-per-node 2 --master-addr 127.0.0.1 examples/train_torch_tensor_parallel.py

Each rank holds half of the head's rows (``ColwiseParallel(output_layouts=Shard(-1))``),
so the logits are a DTensor sharded on the classes; ``ls_xp.cross_entropy`` takes it as
it is (no ``loss_parallel`` context, label smoothing exact over all the classes) and
``backward`` gives each rank the gradient of its shard. Runs on the CPU (gloo) in a few
seconds; on GPUs pass ``--backend nccl`` and the tensors follow the mesh's device.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard
from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

import ls_xp

VOCAB, DIM = 1000, 32


def main(steps: int = 60, backend: str = "gloo") -> list[float]:
    if not dist.is_initialized():
        dist.init_process_group(backend)  # (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT)
    device = "cuda" if backend == "nccl" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    mesh = init_device_mesh(device, (dist.get_world_size(),))
    torch.manual_seed(0)  # the same model and data on every rank
    centers = torch.randn(VOCAB, DIM)
    labels = torch.randint(0, VOCAB, (8192,))
    inputs = centers[labels] + 0.5 * torch.randn(8192, DIM)
    model = torch.nn.Sequential(torch.nn.Linear(DIM, 64), torch.nn.ReLU(), torch.nn.Linear(64, VOCAB)).to(
        device
    )
    parallelize_module(model, mesh, {"2": ColwiseParallel(output_layouts=Shard(-1), use_local_output=False)})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, 8192, (512,))
        logits = model(inputs[idx].to(device))  # a DTensor, Shard(-1): each rank its classes
        # replicated; with PaLM's z-loss and the statistics of the same pass (aux: lse,
        # z-term, accuracy, count), the accuracy that of the global argmax
        loss, aux = ls_xp.cross_entropy(logits, labels[idx].to(device), 0.1, z_loss=1e-4, return_aux=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach().full_tensor()))
        if dist.get_rank() == 0 and (step % 20 == 0 or step == steps - 1):
            acc, ranks = float(aux.accuracy.full_tensor()), dist.get_world_size()
            print(f"step {step:4d}  loss {losses[-1]:.4f}  accuracy {acc:.3f}  ({ranks} ranks)", flush=True)
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    args = parser.parse_args()
    try:
        main(args.steps, args.backend)
        # every rank is done before any tears its group down: a rank that exits while the
        # other's gloo threads still talk to it can abort that one at its exit
        dist.barrier()
    finally:
        dist.destroy_process_group()
