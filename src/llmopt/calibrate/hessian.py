"""The inverse-Hessian factor that SparseGPT and GPTQ both walk columns with.

Both methods minimise a layer's output error ||XW^T - XW'^T||^2, whose Hessian
is H = 2 X^T X / n (collected by `calibrate.stats`), and both need the upper
Cholesky factor of H^-1 to spread each column's error over the columns not
yet visited (the OBS update). They share this module rather than each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from llmopt.errors import BadInput

DAMP_RETRIES = 4


def inverse_cholesky(hessian: torch.Tensor, damp: float, where: str = "") -> torch.Tensor:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U), after dampening H's diagonal.

    One factorisation and one triangular inverse: with J the reversal
    permutation and J H J = L L^T, U = J L^-1 J is upper triangular and
    U^T U = J L^-T L^-1 J = (J L L^T J)^-1 = H^-1. (The textbook route, chol(H),
    its inverse, H^-1 = L^-T L^-1 by a matmul, then chol(H^-1), costs a matmul
    and a second factorisation more.)

    Raises:
        BadInput: H is not positive definite even with the dampening raised
            DAMP_RETRIES times.
    """
    mean_diag = hessian.diagonal().mean()
    flipped = hessian.flip(0, 1)
    for attempt in range(DAMP_RETRIES + 1):
        h = flipped.clone()
        h.diagonal().add_(damp * 10**attempt * mean_diag)
        chol, info = torch.linalg.cholesky_ex(h)
        if info == 0:
            eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
            return torch.linalg.solve_triangular(chol, eye, upper=False).flip(0, 1)
    raise BadInput(
        f"{where}: the Hessian is not positive definite even with dampening "
        f"{damp * 10**DAMP_RETRIES:g} x mean diagonal; raise --damp or use more calibration data"
    )


@contextmanager
def one_thread() -> Iterator[None]:
    """Run a column walk on one intra-op thread.

    The walk is thousands of small ops; with several intra-op threads each one
    pays a thread barrier, which costs far more than the op on a busy CPU (a
    whole down_proj: 1.9 s with 1 thread, 6.5 s with 2, on a loaded 2-core machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
