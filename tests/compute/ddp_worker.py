"""One process of the two-process loss checks of test_ddp.py (run by torch.multiprocessing, spawn)."""

from __future__ import annotations

import os


def batch():
    """A fixed batch: 2 views of 7 subjects (6 features), ages, sites; and the network that embeds them."""
    import torch

    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(7, 6, generator=g), torch.randn(7, 6, generator=g)
    age = torch.rand(7, generator=g) * 60 + 20
    site = torch.tensor([0, 1, 0, 1, 1, 0, 0])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    return net, x1, x2, age, site


def losses(z1, z2, age, site):
    from sobre.learn import nt_xent, y_aware_infonce

    return {"nt_xent": nt_xent(z1, z2, 0.1), "nt_xent_site": nt_xent(z1, z2, 0.1, groups=site),
            "yaware": y_aware_infonce(z1, z2, age, 10.0, 0.1), "yaware_site": y_aware_infonce(z1, z2, age, 10.0, 0.1,
                                                                                              groups=site)}


def single() -> dict:
    """Loss values, gradients and batch-norm statistics of one process on the whole batch."""
    net, x1, x2, age, site = batch()
    z = net(__import__("torch").cat([x1, x2]))
    out = losses(z[:7], z[7:], age, site)
    sum(out.values()).backward()
    return {"loss": {k: float(v.detach()) for k, v in out.items()},
            "grads": [p.grad.numpy().copy() for p in net.parameters()],
            "buffers": [b.numpy().copy() for b in net.buffers()]}


def member(rank: int, world: int, port: int, queue) -> None:
    import torch
    import torch.distributed as dist

    from sobre.learn import gather_rows, init_parallel
    from sobre.learn._engine import data_parallel, global_batchnorm, shard  # the engine's own helpers

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    par = init_parallel()
    net, x1, x2, age, site = batch()
    ddp = data_parallel(global_batchnorm(net), par)
    mine = shard(7, par)  # 4 rows on process 0, 3 on process 1
    k = mine.stop - mine.start
    z = ddp(torch.cat([x1[mine], x2[mine]]))
    z1, z2 = gather_rows(z[:k]), gather_rows(z[k:])
    out = losses(z1, z2, age, site)
    sum(out.values()).backward()
    queue.put((rank, {"loss": {k: float(v.detach()) for k, v in out.items()},
                      "grads": [p.grad.numpy().copy() for p in net.parameters()],
                      "buffers": [b.numpy().copy() for b in net.buffers()]}))
    dist.destroy_process_group()
