"""Inputs and comparisons shared by the fused-backend tests (Triton, native).

Tolerance: elementwise ``rtol`` plus an absolute ``rtol`` times the tensor's largest finite
magnitude. The absolute part is needed for elements that come out of cancellation (a gradient
p_c - onehot_c + ... close to 0, a gate gradient sum_c z_c dz_e,c): there the float32 reference
itself is only accurate to a few ulps of the *summands*, so a purely elementwise bound would test
rounding noise.
"""

from __future__ import annotations

import torch

CPU = torch.device("cpu")
IGNORE = -100
RTOL = 1e-5


def make_inputs(n, m, c, *, dtype=torch.float32, gate_dtype=None, layout="contiguous",
                ignore="some", scale=3.0, seed=0, device=CPU):
    """logits (N, m, C), gate (N, m) requiring grad, int64 target (N,).

    ``gate_dtype``: the gate's dtype when it differs from the logits' ``dtype``.
    ``layout``: "contiguous"; "strided" (views into larger NaN-filled buffers: every dimension
    strided except the classes, so any read outside the view shows up as NaN); "transposed"
    (the class dimension is not the innermost one in memory, gate transposed too).
    ``ignore``: "none", "some" (rows 1, 4, 7, ...) or "all" rows set to ``ignore_index``.
    """
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, m, c, generator=gen, dtype=torch.float64) * scale
    g = torch.softmax(torch.randn(n, m, generator=gen, dtype=torch.float64), 1)
    target = torch.randint(0, c, (n,), generator=gen)
    if ignore == "some":
        target[1::3] = IGNORE
    elif ignore == "all":
        target[:] = IGNORE
    z, g, target = z.to(device, dtype), g.to(device, gate_dtype or dtype), target.to(device)
    if layout == "contiguous":
        return z.requires_grad_(), g.requires_grad_(), target
    if layout == "strided":
        big = torch.full((n, 2 * m, c + 5), float("nan"), dtype=dtype, device=device)
        big[:, ::2, 2:c + 2] = z
        big_g = torch.full((n, 3 * m), float("nan"), dtype=dtype, device=device)
        big_g[:, 1::3] = g
        big_t = torch.full((2 * n,), c + 1000, dtype=torch.long, device=device)
        big_t[::2] = target
        big.requires_grad_()
        big_g.requires_grad_()
        return big[:, ::2, 2:c + 2], big_g[:, 1::3], big_t[::2]
    if layout == "transposed":
        zt = z.permute(2, 0, 1).contiguous().requires_grad_()  # stored (C, N, m)
        gt = g.t().contiguous().requires_grad_()  # stored (m, N)
        return zt.permute(1, 2, 0), gt.t(), target
    raise ValueError(layout)


def assert_close(got, want, what, rtol=RTOL):
    """Elementwise rtol, plus atol = rtol * the tensor's largest finite magnitude."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    got, want = got.detach(), want.detach()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{what}: NaN pattern differs"
    finite = want[torch.isfinite(want)].abs()
    atol = rtol * float(finite.max()) if want.dim() > 0 and finite.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{what}: {m}")
