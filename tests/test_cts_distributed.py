"""Tasks sharded over 2 processes (gloo on loopback) equal the single-process run."""

import torch

from fastcl.algorithms import CTS, CTSConfig, Reptile
from fastcl.distributed import spawn

from test_cts import T, _batch_fn, _cfg, _mlp_loss, _mlp_params

NT = 5  # uneven shards: 3 + 2


def _worker(rank, world, out):
    for name, cls in (("cts", CTS), ("reptile", Reptile)):
        learner = cls(_mlp_params(), _mlp_loss, NT, _cfg(optimizer="adam"), heads=["head"])
        assert learner.world == world and learner.rank == rank
        learner.run(_batch_fn)
        torch.save({"tasks": learner.tasks, "phi": learner.phi, "theta": learner.theta,
                    "meta_steps": learner.meta_steps}, f"{out}/{name}-rank{rank}.pt")


def test_two_processes_equal_one(tmp_path):
    spawn(_worker, 2, str(tmp_path))
    for name, cls in (("cts", CTS), ("reptile", Reptile)):
        single = cls(_mlp_params(), _mlp_loss, NT, _cfg(optimizer="adam"), heads=["head"])
        single.run(_batch_fn)
        parts = [torch.load(tmp_path / f"{name}-rank{r}.pt") for r in range(2)]
        assert torch.cat([p["tasks"] for p in parts]).tolist() == list(range(NT))
        assert [len(p["tasks"]) for p in parts] == [3, 2]
        for p in parts:
            assert p["meta_steps"] == single.meta_steps
            for n in single.phi:  # every rank holds the same phi
                torch.testing.assert_close(p["phi"][n], single.phi[n], rtol=1e-12, atol=1e-12)
        for n in single.names:
            torch.testing.assert_close(torch.cat([p["theta"][n] for p in parts]), single.theta[n],
                                       rtol=1e-12, atol=1e-12)
