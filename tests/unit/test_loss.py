"""mbc_jax/loss.py: the fused head loss and its gradients equal plain autodiff."""

from __future__ import annotations

import jax
import numpy as np


def test_fused_head_loss_and_gradients_equal_plain_autodiff():
    """The head loss whose gradient is formed in the forward pass equals jax.grad of the plain loss."""
    import jax.numpy as jnp

    from mbc_jax.loss import fused_nll_loss

    k = jax.random.split(jax.random.PRNGKey(0), 4)
    h = jax.random.normal(k[0], (3, 11, 16))
    rows = jax.random.normal(k[1], (97, 16))
    y = jax.random.randint(k[2], (3, 11), 0, 97)
    mask = jax.random.bernoulli(k[3], 0.7, (3, 11))
    weight = mask / mask.sum()

    def plain(h, rows):
        logits = h @ rows.T
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[..., None], -1)[..., 0]
        return (weight * nll).sum(), nll

    def fused(h, rows):
        return fused_nll_loss(h, rows, y, weight, chunk=7)  # chunks that do not divide 33 positions

    (want, want_nll), want_g = jax.value_and_grad(plain, (0, 1), has_aux=True)(h, rows)
    (got, got_nll), got_g = jax.value_and_grad(fused, (0, 1), has_aux=True)(h, rows)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(got_nll, want_nll, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_g, want_g):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    # scaled cotangent, and the value alone (no gradient work)
    got_g2 = jax.grad(lambda h, r: 3.0 * fused(h, r)[0], (0, 1))(h, rows)
    np.testing.assert_allclose(got_g2[1], 3.0 * want_g[1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(jax.jit(fused)(h, rows)[0], want, rtol=1e-5)
