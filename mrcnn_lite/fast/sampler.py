"""The balanced sampler without a host read per image: the fast floor's ``sample_indices``.

``randperm(n)`` needs ``n`` on the host. The reference sampler finds the positives and negatives of
each image with ``torch.where``, whose result size the GPU must report: two host-device syncs per
image. Here the counts of all images come back in one transfer, and ``nonzero_static``, told the
count, lists the indices without asking again. Same draw, same indices (tests/test_fast.py).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from ..model.matching import BalancedPositiveNegativeSampler


class SyncFreeBalancedPositiveNegativeSampler(BalancedPositiveNegativeSampler):
    """``BalancedPositiveNegativeSampler`` with one host read per batch instead of two per image."""

    def sample_indices(self, labels: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """The sampled positives and negatives of each image as sorted int64 indices into its labels.

        Same draw as ``__call__``: ``torch.where(pos_masks[i])[0]`` equals ``sample_indices(labels)[0][i]``.
        """
        if len(labels) == 0:
            return [], []
        is_pos = [labels_per_image >= 1 for labels_per_image in labels]
        is_neg = [labels_per_image == 0 for labels_per_image in labels]
        # How many positives and negatives each image has: one host read for the whole batch.
        counts = torch.stack([torch.stack([p.sum(), n.sum()]) for p, n in zip(is_pos, is_neg)]).tolist()

        pos_inds, neg_inds = [], []
        for p, n, (n_pos, n_neg) in zip(is_pos, is_neg, counts):
            # All positives / negatives, ascending, as torch.where would list them; nonzero_static is told
            # how many there are, so it need not read that back from the GPU.
            positive = torch.nonzero_static(p, size=n_pos)[:, 0]
            negative = torch.nonzero_static(n, size=n_neg)[:, 0]

            num_pos = min(n_pos, int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(n_neg, self.batch_size_per_image - num_pos)

            # A random subset of each pool (a random permutation, then its first k).
            pos_chosen = positive[torch.randperm(n_pos, device=positive.device)[:num_pos]]
            neg_chosen = negative[torch.randperm(n_neg, device=negative.device)[:num_neg]]
            pos_inds.append(pos_chosen.sort().values)
            neg_inds.append(neg_chosen.sort().values)
        return pos_inds, neg_inds
