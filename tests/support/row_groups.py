"""What the decode-step tests need of their rows' lengths to exercise SDPA by row groups."""

from collections.abc import Sequence

from app.engines.stepwise.row_groups import plan_row_groups


def a_group_reads_padding(lengths: Sequence[int]) -> bool:
    """Whether some row group holds rows of different lengths, so that its shorter rows read
    padding columns: attention by groups is right only if the mask hides them."""
    return any(
        len(set(lengths[group.start : group.stop])) > 1 for group in plan_row_groups(lengths)
    )
