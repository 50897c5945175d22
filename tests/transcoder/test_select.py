"""The numba top-k kernel against torch.topk: the same chosen values in every row, on every kind of row."""

import pytest
import torch

from lanic_nb.transcoder import select
from lanic_nb.transcoder.select import chosen_values, kernel_available, topk_indices, torch_topk_indices

pytestmark = pytest.mark.skipif(select.numba is None, reason="numba not importable; topk_indices is torch.topk")

SHAPES = [(256, 16), (4096, 32), (1024, 32), (1500, 40), (100, 7), (37, 37), (50, 3), (8, 8), (9, 1), (2048, 64)]


def _rows(kind: str, n: int, width: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, width, generator=gen)
    if kind == "tied":  # a handful of integer values: many ties at the k-th place
        x = torch.randint(0, 4, (n, width), generator=gen).float()
    elif kind == "masked":  # latents beyond a member's size are -inf
        x[:, width // 3:] = -torch.inf
    elif kind == "sparse-mask":
        x[torch.rand(n, width, generator=gen) < 0.7] = -torch.inf
    elif kind == "nan":
        x[torch.rand(n, width, generator=gen) < 0.5] = torch.nan
    elif kind == "all-nan":
        x[:] = torch.nan
    elif kind == "sorted":  # ascending rows: the strided bound sees the largest values in one group
        x = x.sort(-1).values
    return x


@pytest.mark.parametrize("width,k", SHAPES)
@pytest.mark.parametrize("kind", ["random", "tied", "masked", "sparse-mask", "nan", "all-nan", "sorted"])
def test_kernel_chooses_what_torch_chooses(width, k, kind):
    gen = torch.Generator().manual_seed(width * 31 + k)
    x = _rows(kind, 97, width, gen)
    assert kernel_available(x)
    got = topk_indices(x, k)
    assert got.shape == (97, k) and got.dtype == torch.int64
    assert ((got >= 0) & (got < width)).all()
    assert (got.sort(-1).values.diff(dim=-1) > 0).all(), "k distinct indices per row"
    ref = torch_topk_indices(x.nan_to_num(nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf), k)
    assert torch.equal(chosen_values(x, got), chosen_values(x, ref))


def test_leading_dimensions_and_non_contiguous_input():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 9, 300, generator=gen).transpose(0, 1)  # (9, 5, 300), not contiguous
    got = topk_indices(x, 12)
    assert got.shape == (9, 5, 12)
    assert torch.equal(chosen_values(x, got), chosen_values(x, torch_topk_indices(x, 12)))
    one = torch.randn(64, generator=gen)
    assert torch.equal(chosen_values(one, topk_indices(one, 5)), one.topk(5).values.sort().values)


def test_other_dtypes_and_bad_k_fall_back_or_raise():
    x = torch.randn(4, 32, dtype=torch.float64)
    assert not kernel_available(x)
    assert torch.equal(topk_indices(x, 3).sort(-1).values, x.topk(3).indices.sort(-1).values)
    with pytest.raises(ValueError, match="k must be"):
        topk_indices(torch.randn(3, 8), 9)


def test_thread_count_does_not_change_the_choice():
    x = torch.randn(333, 512, generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = topk_indices(x, 16)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.sort(-1).values, topk_indices(x, 16).sort(-1).values)


@pytest.mark.parametrize("kind", ["random", "tied", "masked", "sparse-mask", "sorted"])
@pytest.mark.parametrize("members,rows,width,k", [(5, 32, 256, 16), (3, 17, 100, 7), (2, 8, 8, 2)])
def test_batch_choices_match_topk_then_mask(kind, members, rows, width, k):
    """BatchTopK's per-row choices: the values >= the member's threshold, padded with distinct others; the same
    kept values as torch.topk(kmax) followed by the mask, whatever the padding."""
    gen = torch.Generator().manual_seed(members * 7 + width)
    x = _rows(kind, members * rows, width, gen).view(members, rows, width)
    flat = x.reshape(members, -1)
    t = select.kth_largest(flat, k * rows)  # the kernel's (k x rows)-th largest per member
    assert torch.equal(t, flat.topk(k * rows, dim=-1).values.amin(-1)), "the batch threshold"
    m = int((x >= t.view(-1, 1, 1)).sum(-1).max())
    got = select.at_least_indices(x, t, m)
    assert got.shape == (members, rows, m)
    assert (got.sort(-1).values.diff(dim=-1) > 0).all(), "m distinct indices per row"
    keep = x.gather(-1, got) >= t.view(-1, 1, 1)
    top, _ = x.topk(m, dim=-1)
    ref_keep = top >= t.view(-1, 1, 1)
    assert torch.equal(keep.sum(-1), ref_keep.sum(-1))
    assert torch.equal(keep.sum(-1), (x >= t.view(-1, 1, 1)).sum(-1)), "every value at or above t is chosen"
    kept = torch.where(keep, x.gather(-1, got), -torch.inf).sort(-1).values
    assert torch.equal(kept, torch.where(ref_keep, top, -torch.inf).sort(-1).values)
    with pytest.raises(ValueError, match="m must be"):
        select.at_least_indices(x, t, width + 1)


@pytest.mark.parametrize("n,n_keys", [(0, 5), (1, 1), (1000, 7), (50_000, 12_801)])
def test_counting_sort_equals_torchs_stable_sort(n, n_keys):
    keys = torch.randint(0, n_keys, (n,), generator=torch.Generator().manual_seed(n))
    order, counts = select.sort_by_key(keys, n_keys)
    assert torch.equal(order, keys.sort(stable=True).indices)
    assert torch.equal(counts, torch.bincount(keys, minlength=n_keys))
