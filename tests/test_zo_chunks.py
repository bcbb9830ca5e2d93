"""z drawn a chunk at a time: the same numbers as one fill of the whole tensor, and memory bounded by a chunk."""

import pytest
import torch
from torch import nn

from hf_unlearn.optim import ZOSGD, AdaZO, SeededDirections, ZOAdam, derive_seed
from hf_unlearn.optim import directions as directions_module
from hf_unlearn.optim.directions import CHUNK, _fill_rademacher, chunk_bounds
from hf_unlearn.optim.masters import MasterPiece, MasterWeights
from hf_unlearn.optim.zo import projected_gradients


def _params(*shapes, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    return [nn.Parameter(torch.randn(s, generator=generator).to(dtype)) for s in shapes]


def test_chunk_bounds_cover_the_tensor_and_never_end_on_a_sliver():
    assert chunk_bounds(10) == [(0, 10)]
    assert chunk_bounds(CHUNK) == [(0, CHUNK)]
    assert chunk_bounds(2 * CHUNK + 20) == [(0, CHUNK), (CHUNK, 2 * CHUNK), (2 * CHUNK, 2 * CHUNK + 20)]
    assert chunk_bounds(2 * CHUNK + 7) == [(0, CHUNK), (CHUNK, 2 * CHUNK + 7)]  # 7 < 16 joins the chunk before


@pytest.mark.parametrize("kind", ["sphere", "gaussian", "rademacher"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("tail", [0, 7, 500])
def test_z_drawn_by_chunks_equals_one_fill_of_the_whole_tensor(kind, dtype, tail):
    """On CPU the chunked stream is the stream of one fill: runs keep the numbers they had before chunking."""
    numel = 2 * CHUNK + tail
    engine = SeededDirections(_params((numel,), dtype=dtype), kind)
    generator = torch.Generator().manual_seed(derive_seed(5, 0))
    whole = torch.empty(numel, dtype=dtype)
    _fill_rademacher(whole, generator) if kind == "rademacher" else whole.normal_(generator=generator)
    assert torch.equal(engine.sample(5, 0), whole)
    assert engine.buffer("z", 0).numel() < CHUNK + 16  # the only z-sized memory: one chunk, not 2 MB of tensor


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 1,984 elements (a multiple of 64, as the real CHUNK is) so small tensors span several."""
    monkeypatch.setattr(directions_module, "CHUNK", 16 * 31 * 4)


def _step_twice(make, defer: bool, q: int = 1, **settings):
    params = _params((61, 97), (5000,), (3,))  # 5,917 and 5,000 elements: 3 chunks each with small_chunks
    optimizer = make(params, **settings)
    target = [torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) for p in params]

    def loss():
        return sum(((p - t) ** 2).sum() for p, t in zip(params, target))

    for step in range(2):
        seeds = [derive_seed(3, step, i) for i in range(q)]
        projected, _ = projected_gradients(optimizer, loss, seeds, defer_restore=defer)
        for seed, c in zip(seeds, projected):
            optimizer.record(seed, float(c))
        optimizer.step()
    return [p.detach().clone() for p in params]


OPTIMIZERS = {
    "zo_sgd": lambda p, **s: ZOSGD(p, lr=1e-3, weight_decay=0.1, **s),
    "zo_adam": lambda p, **s: ZOAdam(p, lr=1e-3, **s),
    "adazo": lambda p, **s: AdaZO(p, lr=1e-3, **s),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize(("kind", "q", "defer", "cache"), [
    ("sphere", 1, True, False), ("rademacher", 2, False, False), ("gaussian", 2, True, True),
])  # fmt: skip
def test_steps_over_small_chunks_equal_steps_over_whole_tensors_bit_for_bit(monkeypatch, name, kind, q, defer, cache):
    whole = _step_twice(OPTIMIZERS[name], defer, q, direction=kind, cache_directions=cache)
    monkeypatch.setattr(directions_module, "CHUNK", 16 * 31 * 4)
    chunked = _step_twice(OPTIMIZERS[name], defer, q, direction=kind, cache_directions=cache)
    if kind == "sphere":  # the norm sums per-chunk squares: other chunks, other last bits of the scale
        for a, b in zip(whole, chunked):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # weights ~1: a few ulps
    else:
        assert all(torch.equal(a, b) for a, b in zip(whole, chunked))
    assert not torch.equal(whole[0], _params((61, 97))[0])  # the steps moved the weights


def test_bf16_stochastic_rounding_over_small_chunks_equals_whole_tensors(monkeypatch):
    def make(params, **settings):
        return ZOSGD([nn.Parameter(p.detach().to(torch.bfloat16)) for p in params], lr=1e-2, **settings)

    settings = {"direction": "gaussian", "stochastic_rounding": True}
    whole = _step_twice(make, True, **settings)
    monkeypatch.setattr(directions_module, "CHUNK", 16 * 31 * 4)
    assert all(torch.equal(a, b) for a, b in zip(whole, _step_twice(make, True, **settings)))


class _Pieces(MasterWeights):
    """This process owns elements 1000..4500 of tensor 0 (starting inside a chunk, ending inside another)."""

    def __init__(self, params, absolute: bool):
        low = params[0].data.view(-1)[1000:4500]
        super().__init__([MasterPiece(low, low.float().clone() if absolute else None, 1000, 3500), None])


@pytest.mark.parametrize("absolute", [True, False])
def test_a_master_piece_that_starts_mid_chunk_moves_by_its_own_slice_of_z(small_chunks, absolute):
    params = _params((61, 97), (50,))
    before = params[0].detach().clone().view(-1)
    engine = SeededDirections(params, "sphere")
    engine.attach_masters(_Pieces(params, absolute))
    z = engine.direction(4, 0).view(-1)
    engine.move_(4, 0.5, 0.0)
    after = params[0].detach().view(-1)
    torch.testing.assert_close(after[1000:4500], before[1000:4500] + 0.5 * z[1000:4500], rtol=0, atol=1e-6)
    assert torch.equal(after[:1000], before[:1000]) and torch.equal(after[4500:], before[4500:])


def test_a_zo_step_holds_one_chunk_of_z_whatever_the_largest_tensor(small_chunks):
    params = _params((61, 97), (5000,))
    optimizer = ZOAdam(params, lr=1e-3, num_directions=2)
    sizes = []
    original = SeededDirections.buffer

    def spy(self, role, index):
        out = original(self, role, index)
        sizes.append(out.numel())
        return out

    SeededDirections.buffer = spy
    try:
        optimizer.record(1, 0.5)
        optimizer.record(2, -0.25)
        optimizer.step()
    finally:
        SeededDirections.buffer = original
    assert sizes and max(sizes) < 16 * 31 * 4 + 16  # a chunk (plus a tail below 16), not 5,917 elements


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moments_are_shaped_like_their_parameter_and_fp32_under_stochastic_rounding(small_chunks, dtype):
    """As torch's optimizers keep them (and checkpoints saved before chunking hold them)."""
    params = _params((61, 97), (5,), dtype=dtype)
    optimizer = AdaZO(params, lr=1e-3, stochastic_rounding=dtype == torch.bfloat16)
    for step in range(2):
        optimizer.record(step, 0.5)
        optimizer.step()
    for p in params:
        state = optimizer.state[p]
        assert state["step"] == 2  # once per step, not once per chunk
        for name in ("exp_avg", "exp_avg_sq"):
            assert state[name].shape == p.shape and state[name].dtype == torch.float32
            assert bool(state[name].ne(0).all())  # every chunk's moments were updated
