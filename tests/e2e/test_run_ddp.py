"""End to end: a real PyTorch DistributedDataParallel job (gloo) across three sshd nodes, launched
by torchrun through the workload layer, with results collected from every node."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lepton_infra.inventory import Inventory
from lepton_infra.workload import run_job

DDP_JOB = textwrap.dedent(
    """\
    import json, os
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(100 + rank)  # every rank sees different data
    steps = 20
    for step in range(steps):
        x = torch.randn(16, 4, generator=gen)
        loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0 and step % 5 == 4:
            print("LEPTON_PROGRESS " + json.dumps({"epoch": 1, "epochs": 1, "step": step + 1, "steps": steps,
                                                   "loss": loss.item()}), flush=True)
    weights = model.module.weight.detach().clone()
    gathered = [torch.zeros_like(weights) for _ in range(world)]
    dist.all_gather(gathered, weights)
    result = {
        "rank": rank,
        "world_size": world,
        "all_reduce_sum": total.item(),
        "weights_in_sync": all(torch.equal(gathered[0], w) for w in gathered),
        "final_loss": loss.item(),
    }
    with open(os.path.join(os.environ["LEPTON_OUTPUT_DIR"], "metrics.json"), "w") as f:
        json.dump(result, f)
    print(f"rank {rank}/{world} done, loss {loss.item():.4f}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_ddp_gloo_job_on_three_nodes_trains_in_sync_and_every_node_result_is_collected(
    pool: Inventory, make_workload: Callable[..., Path], recorder: Callable[[], Any], tmp_path: Path
) -> None:
    events = recorder()
    runs = tmp_path / "runs"
    result = run_job(pool, make_workload(job=DDP_JOB), run_id="ddp-1", runs_dir=runs, events=events)

    assert result.status == "succeeded", [(n.name, n.state, n.detail) for n in result.nodes]
    for rank, node in enumerate(result.nodes):
        metrics = json.loads((runs / "ddp-1" / node.name / "output" / "metrics.json").read_text())
        assert metrics["rank"] == rank and metrics["world_size"] == 3
        assert metrics["all_reduce_sum"] == 6.0  # 1 + 2 + 3: all three nodes took part
        assert metrics["weights_in_sync"] is True  # DDP averaged the gradients across nodes
        assert f"rank {rank}/3 done" in (runs / "ddp-1" / node.name / "logs" / "node.log").read_text()
        assert f"rank {rank}/3 done" in " ".join(events.lines(node.name))
    assert [p["step"] for n, p in events.progress if n == "node-0"] == [5, 10, 15, 20]
    record = json.loads((runs / "ddp-1" / "run.json").read_text())
    assert record["status"] == "succeeded" and [n["exit_code"] for n in record["nodes"]] == [0, 0, 0]
