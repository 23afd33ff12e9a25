"""The runner's checks of a pruning method's result: a bad selection is refused with a clear error,
a good one passes and comes back as long indices."""

import pytest
import torch

from vla_accel.accel.checks import check_selection


def test_a_sorted_in_range_selection_passes_as_long():
    kept = torch.tensor([[0, 3, 7], [1, 2, 9]], dtype=torch.int32)
    out = check_selection(kept, 2, 3, 10)
    assert out.dtype == torch.long and out.tolist() == kept.tolist()
    assert check_selection(kept, 2, 3, 10, candidates=torch.tensor([[0, 3, 5, 7], [1, 2, 8, 9]])).tolist() == kept.tolist()


@pytest.mark.parametrize("kept, match", [
    ([[0, 3, 10]], "outside"),            # index M
    ([[-1, 3, 4]], "outside"),
    ([[0, 4, 3]], "strictly increasing"),  # unsorted
    ([[2, 2, 5]], "strictly increasing"),  # a duplicate
])
def test_bad_indices_are_refused(kept, match):
    with pytest.raises(ValueError, match=match):
        check_selection(torch.tensor(kept), 1, 3, 10)


def test_a_wrong_shape_and_a_later_stage_outside_its_candidates_are_refused():
    with pytest.raises(ValueError, match="shape"):
        check_selection(torch.tensor([[0, 1]]), 1, 3, 10)
    with pytest.raises(ValueError, match="subset"):
        check_selection(torch.tensor([[0, 3, 7]]), 1, 3, 10, candidates=torch.tensor([[0, 3, 6, 8]]))
