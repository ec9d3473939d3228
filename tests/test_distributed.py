"""An increment under real 2-process DDP on CPU (gloo), and with gradient accumulation, matches a 1-process run.

Both are known traps: DDP fixes the trainable set when it wraps the model, and Trainer scales the loss of models
whose forward takes **kwargs by the number of processes / accumulation steps (see PLATFORM.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("ddp_increment.py")


def _run(out: Path, batch: int, accumulation: int, phase: str, processes: int = 1) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true"}
    if processes == 1:
        command = [sys.executable, str(SCRIPT)]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", "29517", str(SCRIPT)]
    done = subprocess.run(command + [str(out), str(batch), str(accumulation), phase], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _load(out: Path, rank: int):
    return load_file(str(out / f"rank{rank}.safetensors")), json.loads((out / f"rank{rank}.json").read_text())


def _assert_close_states(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-5, msg=f"{name} differs")


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["finetune", "warmup"])
def test_two_process_ddp_matches_one_process(tmp_path, phase):
    _run(tmp_path / "single", 8, 1, phase)
    _run(tmp_path / "ddp", 4, 1, phase, processes=2)
    single, single_info = _load(tmp_path / "single", 0)
    rank0, info0 = _load(tmp_path / "ddp", 0)
    rank1, info1 = _load(tmp_path / "ddp", 1)
    assert info0["world_size"] == 2 and info1["world_size"] == 2, "accelerate ran fewer than 2 processes"
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between the ranks"
    assert info0["num_labels"] == 4
    # Same global batch (2 x 4 = 8): same loss and same weights as one process, not a loss scaled by 2.
    assert info0["train_loss"] == pytest.approx(single_info["train_loss"], rel=1e-4)
    _assert_close_states(rank0, single, atol=1e-5)


@pytest.mark.slow
def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    _run(tmp_path / "big", 8, 1, "finetune")
    _run(tmp_path / "accum", 4, 2, "finetune")
    big, big_info = _load(tmp_path / "big", 0)
    accum, accum_info = _load(tmp_path / "accum", 0)
    assert accum_info["train_loss"] == pytest.approx(big_info["train_loss"], rel=1e-4)
    _assert_close_states(accum, big, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("ddp_phase", ["closed_form", "closed_form_stream"], ids=["dataset", "stream"])
def test_two_processes_share_the_closed_form_pass_and_solve_the_same_head(tmp_path, ddp_phase):
    # One process with a Dataset against two with the same Dataset, or with it streamed (IterableDataset).
    _run(tmp_path / "single", 8, 1, "closed_form")
    _run(tmp_path / "ddp", 8, 1, ddp_phase, processes=2)
    single, single_info = _load(tmp_path / "single", 0)
    ranks = [_load(tmp_path / "ddp", rank) for rank in (0, 1)]
    rows = 14  # 7 rows of each of the 2 new labels
    assert single_info["rows_encoded"] == rows and single_info["count"] == 15 + rows
    for tensors, info in ranks:
        assert info["world_size"] == 2 and info["count"] == single_info["count"]
        assert info["rows_encoded"] <= -(-rows // 2)  # each process encodes its share, ceil(N / 2) rows at most
        for name in ("counts", "sums", "scatter"):
            error = (tensors[name] - single[name]).abs().max() / single[name].abs().max()
            assert error <= 1e-10, f"{name}: relative error {error:.1e}"
        torch.testing.assert_close(tensors["weight"], single["weight"], rtol=1e-5, atol=1e-6)
    assert sum(info["rows_encoded"] for _, info in ranks) == rows
    assert torch.equal(ranks[0][0]["weight"], ranks[1][0]["weight"])


@pytest.mark.slow
def test_two_processes_streaming_different_rows_are_refused(tmp_path):
    with pytest.raises(AssertionError, match="yielded different rows in different processes"):
        _run(tmp_path / "ddp", 8, 1, "stream_mismatch", processes=2)


@pytest.mark.slow
def test_two_processes_share_a_column_and_a_streamed_data_set_and_sum_to_the_one_process_statistics(tmp_path):
    _run(tmp_path / "single", 1, 1, "streamed")
    _run(tmp_path / "ddp", 1, 1, "streamed", processes=2)
    single, single_info = _load(tmp_path / "single", 0)
    ranks = [_load(tmp_path / "ddp", rank) for rank in (0, 1)]
    rows = 14
    for kind in ("column", "stream1", "stream2"):
        assert single_info["rows_encoded"][kind] == rows
        assert sum(info["rows_encoded"][kind] for _, info in ranks) == rows
        for tensors, info in ranks:
            assert info["world_size"] == 2, "accelerate ran fewer than 2 processes"
            assert info["rows_encoded"][kind] <= -(-rows // 2)  # ceil(N / 2) rows at most per process
            for name in ("counts", "sums", "scatter"):
                error = (tensors[f"{kind}_{name}"] - single[f"{kind}_{name}"]).abs().max() / single[
                    f"{kind}_{name}"].abs().max()
                assert error <= 1e-10, f"{kind}_{name}: relative error {error:.1e}"
                # The streamed pass sums to the same statistics as the in-memory one.
                error = (tensors[f"{kind}_{name}"] - single[f"column_{name}"]).abs().max() / single[
                    f"column_{name}"].abs().max()
                assert error <= 1e-10, f"{kind}_{name} against the column: relative error {error:.1e}"


@pytest.mark.slow
def test_two_processes_adapt_a_model_trained_elsewhere_to_the_same_weights(tmp_path):
    # The adaptation's fine-tune runs under DDP and its statistics pass is sharded: both processes must end with the
    # same model, whose statistics count every row once.
    _run(tmp_path / "ddp", 4, 1, "adapt", processes=2)
    (rank0, info0), (rank1, info1) = _load(tmp_path / "ddp", 0), _load(tmp_path / "ddp", 1)
    assert info0["world_size"] == 2 and info1["world_size"] == 2, "accelerate ran fewer than 2 processes"
    for info in (info0, info1):
        assert info["head_rows"] == "adapted" and info["count"] == 32 and info["kept"] == [False] * 4
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between the ranks"


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["kernel", "kernel_multi_label", "kernel_elsewhere"],
                         ids=["single_label", "multi_label", "multi_label_trained_elsewhere"])
def test_two_processes_share_the_kernel_heads_pass_and_solve_the_same_head(tmp_path, phase):
    # The first increment gathers every process's pooled rows (every process chooses the same bandwidth); the
    # continuation sums the processes' shares (counts, sums, raw second moments; multi-label also the annotated rows'
    # counts and sums and every row's sum) and merges them into the head.
    # Trained elsewhere: the head starts at the increment, beside the classifier's kept rows.
    _run(tmp_path / "single", 8, 1, phase)
    _run(tmp_path / "ddp", 8, 1, phase, processes=2)
    single, single_info = _load(tmp_path / "single", 0)
    ranks = [_load(tmp_path / "ddp", rank) for rank in (0, 1)]
    for tensors, info in ranks:
        assert info["world_size"] == 2 and info["bandwidth"] == single_info["bandwidth"]
        assert info["rows_encoded"] <= 7  # each process encodes its share of the 14 rows
        assert info["linear_labels"] == ([0, 1, 2] if phase == "kernel_elsewhere" else [])
        assert torch.equal(tensors["counts"], single["counts"])
        for name in single:
            if name in ("weight", "bias", "counts"):
                continue
            error = (tensors[name] - single[name]).abs().max() / single[name].abs().max()
            assert error <= 1e-10, f"{name}: relative error {error:.1e}"
        torch.testing.assert_close(tensors["weight"], single["weight"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(tensors["bias"], single["bias"], rtol=1e-4, atol=1e-5)
    for name in ranks[0][0]:
        assert torch.equal(ranks[0][0][name], ranks[1][0][name]), f"{name} differs between the processes"
