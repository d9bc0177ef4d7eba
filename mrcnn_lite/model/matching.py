"""Matching and sampling: which ground-truth box each anchor or proposal stands for, and which of them
the loss looks at. Used by both stages: the RPN (anchors vs GT boxes) and the RoI heads (proposals vs
GT boxes).

``Matcher``                           best GT per prediction by IoU: a GT index, or -1 (background),
                                      or -2 (between the thresholds: ignored)
``BalancedPositiveNegativeSampler``   a fixed number of examples per image, at most a fraction positive

Same semantics and constructors as torchvision's ``models.detection._utils``; the tests prove equality.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["Matcher", "BalancedPositiveNegativeSampler"]


# --------------------------------------------------------------------------------------------------
# Matching: which ground-truth box does each anchor (or proposal) belong to?
# --------------------------------------------------------------------------------------------------
class Matcher:
    """Assigns to every prediction (anchor / proposal) at most one ground-truth box, by IoU.

    ``matcher(match_quality_matrix)`` with ``match_quality_matrix (M, N)`` = IoU of M ground-truth
    boxes with N predictions returns ``matched_idxs (N,) int64``:

    * ``m in [0, M)`` if the best IoU of prediction n is ``>= high_threshold`` (a foreground match);
    * ``BETWEEN_THRESHOLDS = -2`` if it is in ``[low_threshold, high_threshold)`` (ambiguous: ignored);
    * ``BELOW_LOW_THRESHOLD = -1`` if it is ``< low_threshold`` (background).

    ``allow_low_quality_matches=True`` (the RPN uses it) adds, for every ground-truth box, the
    prediction(s) that overlap it most -- ties included -- even if that best IoU is below
    ``high_threshold``. Without it a small or oddly shaped object that no anchor covers at IoU >= 0.7
    would have no positive anchor at all, and the RPN would never learn to propose it.

    Batched form (used by the RPN to match all images at once): ``match_quality_matrix (B, M, N)``
    where images with fewer than M boxes are padded with rows of a negative value (e.g. -1). IoU is
    never negative, so padded rows never win a max and are skipped by the low-quality rule.
    Returns ``(B, N)``. An image with only padded rows gets all ``BELOW_LOW_THRESHOLD``.

    Same semantics and constructor as ``torchvision.models.detection._utils.Matcher``.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(
                f"Matcher: low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})"
            )
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        if not isinstance(match_quality_matrix, Tensor):
            raise TypeError(f"Matcher: match_quality_matrix must be a Tensor, got {type(match_quality_matrix).__name__}")
        if match_quality_matrix.dim() == 2:
            # Same contract as torchvision: an empty matrix is a caller error during training.
            if match_quality_matrix.numel() == 0:
                if match_quality_matrix.shape[0] == 0:
                    raise ValueError("Matcher: no ground-truth boxes available for one of the images during training")
                raise ValueError("Matcher: no proposal boxes available for one of the images during training")
            return self._match(match_quality_matrix[None])[0]
        if match_quality_matrix.dim() == 3:
            batch, num_gt, num_pred = match_quality_matrix.shape
            if num_gt == 0:  # no image of the batch has a ground-truth box: all background
                return torch.full((batch, num_pred), self.BELOW_LOW_THRESHOLD, dtype=torch.int64,
                                  device=match_quality_matrix.device)
            return self._match(match_quality_matrix)
        raise ValueError(
            f"Matcher: match_quality_matrix must have shape (M, N) or (B, M, N), got {tuple(match_quality_matrix.shape)}"
        )

    def _match(self, quality: Tensor) -> Tensor:
        """``quality (B, M, N)`` with M >= 1 -> ``matched_idxs (B, N)``."""
        # For every prediction, its best ground truth (first one on ties, like torch.max).
        matched_vals, matches = quality.max(dim=1)                     # (B, N), (B, N)
        all_matches = matches.clone() if self.allow_low_quality_matches else None

        below_low_threshold = matched_vals < self.low_threshold
        between_thresholds = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches.masked_fill_(below_low_threshold, self.BELOW_LOW_THRESHOLD)
        matches.masked_fill_(between_thresholds, self.BETWEEN_THRESHOLDS)

        if all_matches is not None:
            self.set_low_quality_matches_(matches, all_matches, quality)
        return matches

    def set_low_quality_matches_(self, matches: Tensor, all_matches: Tensor, quality: Tensor) -> None:
        """Give each ground-truth box its best prediction(s), even when that IoU is low (in place).

        ``matches, all_matches (B, N)``, ``quality (B, M, N)``. For every real GT box, every prediction
        whose IoU with it equals that box's highest IoU (ties included) gets back its best match from
        ``all_matches`` -- which is this GT unless another GT overlaps the prediction even more.
        """
        highest_quality_foreach_gt = quality.max(dim=2).values           # (B, M)
        is_best = quality == highest_quality_foreach_gt[:, :, None]      # (B, M, N)
        is_best &= (highest_quality_foreach_gt >= 0)[:, :, None]         # skip padded GT rows
        is_best_for_some_gt = is_best.any(dim=1)                         # (B, N)
        matches.copy_(torch.where(is_best_for_some_gt, all_matches, matches))


# --------------------------------------------------------------------------------------------------
# Sampling: a fixed-size, balanced mini-batch of anchors per image for the loss.
# --------------------------------------------------------------------------------------------------
class BalancedPositiveNegativeSampler:
    """Picks ``batch_size_per_image`` examples per image, at most ``positive_fraction`` of them positive.

    An image has ~100k anchors, almost all background. Training on all of them would drown the few
    positives; sampling e.g. 256 with up to half positive keeps the objectness loss balanced.
    If there are too few positives the rest is filled with negatives (and vice versa).

    ``sampler(labels)``: ``labels`` is a list (one per image) of ``(N_i,)`` tensors in which ``-1``
    (or any negative value) means ignore, ``0`` background and ``>= 1`` foreground.
    Returns ``(pos_masks, neg_masks)``: two lists of ``(N_i,)`` bool tensors marking the sampled
    positives and negatives (torchvision returns the same masks as uint8; use ``torch.where`` or
    boolean indexing on either).

    The random draw is one ``torch.randperm`` of the positives then one of the negatives per image,
    exactly as torchvision does, so with the same seed both pick the same examples.
    ``sampler.sample_indices(labels)`` returns the same draw as sorted index tensors (what the RPN and
    the RoI heads use).
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        if batch_size_per_image < 0:
            raise ValueError(f"batch_size_per_image must be >= 0, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        pos_inds, neg_inds = self.sample_indices(labels)
        pos_masks, neg_masks = [], []
        for labels_per_image, pos_chosen, neg_chosen in zip(labels, pos_inds, neg_inds):
            pos_mask = torch.zeros_like(labels_per_image, dtype=torch.bool)
            neg_mask = torch.zeros_like(labels_per_image, dtype=torch.bool)
            pos_mask[pos_chosen] = True
            neg_mask[neg_chosen] = True
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks

    def sample_indices(self, labels: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """The same draw as ``__call__``, as sorted int64 indices into each image's labels:
        ``torch.where(pos_masks[i])[0]`` equals ``sample_indices(labels)[0][i]``."""
        pos_inds, neg_inds = [], []
        for labels_per_image in labels:
            positive = torch.where(labels_per_image >= 1)[0]
            negative = torch.where(labels_per_image == 0)[0]

            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)

            # A random subset of each pool (a random permutation, then its first k).
            pos_chosen = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
            neg_chosen = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
            pos_inds.append(pos_chosen.sort().values)
            neg_inds.append(neg_chosen.sort().values)
        return pos_inds, neg_inds
