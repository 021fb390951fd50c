"""Realistic random weights for the fake codec: codebooks drawn from the encoder's own latents."""

from __future__ import annotations

import numpy as np

from fakecodec import Fake, FakeConfig


def random_state(config: FakeConfig | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    c = config or FakeConfig()
    rng = np.random.default_rng(seed)
    model = Fake(c)
    state = {name: (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
             for name, shape in model.named_shapes() if not name.startswith("quantizer")}
    # codebooks: k-means-free but realistic, residuals of latents of noise at speech-like levels
    model.load({**state, **{f"quantizer.codebooks.{k}": np.zeros((c.codebook_size, c.dimension),
                                                                            np.float32)
                                       for k in range(c.num_codebooks)}})
    latents = model.encode_latent(rng.standard_normal((4, c.sample_rate)).astype(np.float32) * 0.1)
    residual = latents.transpose(0, 2, 1).reshape(-1, c.dimension)
    for level in range(c.num_codebooks):
        book = residual[rng.choice(len(residual), c.codebook_size, replace=False)].copy()
        state[f"quantizer.codebooks.{level}"] = book.astype(np.float32)
        chosen = ((residual[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)
        residual = residual - book[chosen]
    return state
