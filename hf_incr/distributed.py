"""The frozen pass across processes: which rows this process encodes, and how the results come together.

Under ``accelerate launch --num_processes N`` each process encodes about ``1/N`` of an increment's rows
(:func:`rows_of_this_process`, accelerate's ``split_between_processes``; a stream is written to disk first, then
split the same way). Closed-form statistics are sums, so each
process accumulates its rows' share in float64 and :func:`sum_over_processes` adds the shares up (an all-reduce):
every process ends with the same statistics and solves the same head. Row-wise results that a later step needs in
full (the cached warm-up's features, herding) are put back together in row order by :func:`gather_rows`.
Without a distributed launch every function is the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def distributed_launch() -> bool:
    """Whether this process is one of several (a distributed launch with more than one process)."""
    return _distributed()


def rows_of_this_process(num_rows: int) -> range:
    """The row indices this process encodes: a contiguous share of ``range(num_rows)``, at most ``ceil(n / N)``.

    A ``range``, not a list: a list of Python ints costs 36 bytes a row (11 MB at 300,000 rows)."""
    if not _distributed():
        return range(num_rows)
    from accelerate import PartialState  # only under a distributed launch

    # accelerate slices a tensor as it slices a list; the share is contiguous, so its ends describe it.
    with PartialState().split_between_processes(torch.arange(num_rows)) as share:
        return range(int(share[0]), int(share[-1]) + 1) if len(share) else range(0)


def sum_over_processes(*tensors: torch.Tensor) -> None:
    """Add each tensor up over the processes, in place (every process ends with the sums)."""
    if not _distributed():
        return
    backend_device = _communication_device()
    for tensor in tensors:
        moved = tensor.to(backend_device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        tensor.copy_(moved.to(tensor.device))


def gather_rows(local: torch.Tensor, index: Sequence[int], num_rows: int) -> torch.Tensor:
    """The full ``(num_rows, ...)`` tensor from each process's rows ``local`` at positions ``index``."""
    if not _distributed():
        return local
    full = torch.zeros((num_rows, *local.shape[1:]), dtype=local.dtype)
    full[list(index)] = local.cpu()
    # Each row is filled by exactly one process and zero elsewhere, so a sum puts every row in place.
    sum_over_processes(full)
    return full


def gather_variable_rows(local: torch.Tensor) -> torch.Tensor:
    """Every process's ``local`` rows (any number, the same trailing shape), concatenated in process order."""
    if not _distributed():
        return local
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = torch.zeros(world, dtype=torch.int64)
    sizes[rank] = local.shape[0]
    sum_over_processes(sizes)
    start = int(sizes[:rank].sum())
    full = torch.zeros((int(sizes.sum()), *local.shape[1:]), dtype=local.dtype)
    full[start : start + local.shape[0]] = local.cpu()
    # Each row is filled by exactly one process and zero elsewhere, so a sum puts every row in place.
    sum_over_processes(full)
    return full


def every_process_agrees(value: str) -> bool:
    """Whether ``value`` (an ASCII string of at most 64 characters, e.g. a fingerprint) is the same in every
    process: the elementwise maximum and minimum of its character codes agree only then (no pickling)."""
    if not _distributed():
        return True
    codes = torch.zeros(65, dtype=torch.int64)
    codes[0] = len(value)
    codes[1 : len(value) + 1] = torch.tensor([ord(c) for c in value[:64]], dtype=torch.int64)
    device = _communication_device()
    # Two copies: on the CPU, `.to(device)` would hand back `codes` itself for both.
    highest, lowest = codes.to(device, copy=True), codes.to(device, copy=True)
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    return bool(torch.equal(highest, lowest))


def _communication_device() -> torch.device:
    # NCCL communicates GPU tensors, gloo CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
