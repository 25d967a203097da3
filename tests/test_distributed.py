"""Two gloo processes with half a batch each train exactly like one process with the whole batch.

Under DDP each rank computes the batch-level losses (SDM, CMT, ITC) over the all-gathered global
batch and the per-sample losses (ID, TIR) over its own rows; DDP then averages the gradients over
ranks. `gather_with_grad`'s backward sums every rank's gradient for a rank's rows, so the average
equals the single-process gradient. These tests run real processes (``torchrun``, gloo) and compare
against one process on the whole batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from uit_reid import CLIPDualEncoder, TIRHead, UITModel

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SIZE = (96, 32)
GLOBAL_BATCH = 8
# identities split across the two halves (0..3 have one pair on each rank; 4 and 5 are alone)
PIDS = [0, 1, 2, 3, 0, 1, 4, 5]
CASES = {
    "contrastive": {"sdm": 1.0, "id": 1.0, "cmt": 10.0, "itc": 0.5, "tir": 0.0},
    "with_tir": {"sdm": 1.0, "id": 1.0, "cmt": 10.0, "itc": 0.0, "tir": 10.0},
}
MASK_SEED = 1234


def build(case: str) -> UITModel:
    """The same weights in every process (seeded), a small TIR head where the case uses TIR."""
    torch.manual_seed(0)
    encoder = CLIPDualEncoder.from_open_clip("uit-tiny", image_size=SIZE)
    tir = TIRHead(encoder.embed_dim, encoder.grid_size, encoder.patch_size, width=32, depth=1, heads=4)
    return UITModel(encoder, num_classes=6, tir_head=tir if CASES[case]["tir"] else False, loss_weights=CASES[case],
                    logit_scale=20.0)


def global_batch(encoder: CLIPDualEncoder) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    words = ["red", "blue", "green", "black", "white", "grey"]
    return {
        "images": torch.randn(GLOBAL_BATCH, 3, *SIZE, generator=gen),
        "text_ids": encoder.tokenize([f"a person in a {words[p]} coat, photo {i}" for i, p in enumerate(PIDS)]),
        "pids": torch.tensor(PIDS),
    }


WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    sys.path.insert(0, sys.argv[2])
    import test_distributed as t
    from uit_reid.distributed import all_reduce_mean

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = {}
    for case in t.CASES:
        model = t.build(case)
        ddp = DistributedDataParallel(model)
        batch = t.global_batch(model.encoder)
        local = t.GLOBAL_BATCH // world
        mine = {k: v[rank * local:(rank + 1) * local] for k, v in batch.items()}
        # TIR draws its masks from the global RNG: rank r skips the r * local rows of noise the
        # single process draws for the rows before its own, so both sides mask the same patches
        torch.manual_seed(t.MASK_SEED)
        if rank:
            torch.rand(rank * local, model.encoder.grid_size[0] * model.encoder.grid_size[1])
        losses = ddp(mine)
        losses["loss"].backward()
        logged = all_reduce_mean({k: v.detach() for k, v in losses.items()})
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out[case] = {"grads": grads, "logged": logged}
    if rank == 0:
        torch.save(out, sys.argv[1])
    dist.destroy_process_group()
    """
)


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    result_path = tmp / "rank0.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(result_path), str(Path(__file__).parent)]
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return torch.load(result_path, weights_only=True)


def _single_process(case: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model = build(case)
    torch.manual_seed(MASK_SEED)
    out = model(global_batch(model.encoder))
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return grads, {k: v.detach() for k, v in out.items()}


def test_the_mask_noise_of_two_halves_is_the_noise_of_the_whole_batch() -> None:
    """The premise of the TIR case: drawing 8 rows equals drawing 4 rows twice from one stream."""
    torch.manual_seed(MASK_SEED)
    whole = torch.rand(GLOBAL_BATCH, 36)
    torch.manual_seed(MASK_SEED)
    halves = torch.cat([torch.rand(GLOBAL_BATCH // 2, 36), torch.rand(GLOBAL_BATCH // 2, 36)])
    assert torch.equal(whole, halves)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_ddp_averaged_gradients_equal_the_single_process_gradients(two_process_results, case) -> None:
    expected, _ = _single_process(case)
    got = two_process_results[case]["grads"]
    assert got.keys() == expected.keys()
    if case == "with_tir":
        assert any(name.startswith("tir_head.") for name in got)
    for name, grad in expected.items():
        assert grad.abs().max() > 0 or name.startswith("classifier"), name
        torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_logged_loss_values_equal_the_single_process_values(two_process_results, case) -> None:
    _, expected = _single_process(case)
    got = two_process_results[case]["logged"]
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
