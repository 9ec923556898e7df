"""Which packed rows each optimizer step reads: a pure function of (step, total steps).

Per sequence-length phase (one phase unless a schedule such as LTG-BERT's 128 -> 512 is chosen) the
training documents are packed at that phase's length, and the phase's steps walk through epochs of a
permutation seeded by (seed, epoch). The last step of an epoch wraps around to the start of the
permutation so every step has a full global batch and no row is dropped. Nothing depends on the steps
before, so a resumed run reads exactly the rows an uninterrupted one would, and every rank agrees.
"""

from __future__ import annotations

import math

import numpy as np

from masklm.data.packing import PackedRows
from masklm.data.shards import ShardedCorpus
from masklm.training.progress import SeqLenSchedule

PHASE_EPOCH_STRIDE = 1_000_000  # epoch keys of phase p start at p * stride: masks differ between phases


class RowOrder:
    """The rows of each sequence-length phase, and ``at(step, total)``: what step ``step`` reads.

    rows[p]: the training documents packed at phase p's length; batch_sizes[p]: rows per micro-batch;
    rows_per_step[p]: rows per optimizer step over all micro-batches and ranks; steps_per_epoch[p].
    """

    def __init__(self, corpus: ShardedCorpus, doc_indices: np.ndarray, pad_id: int, seq_schedule: SeqLenSchedule,
                 batch_size: int, micro_per_step: int, seed: int) -> None:
        self.seq_schedule = seq_schedule
        self.seed = seed
        self.rows = [PackedRows(corpus, doc_indices, p.seq_len, pad_id) for p in seq_schedule.phases]
        self.batch_sizes = [p.batch_size(batch_size) for p in seq_schedule.phases]
        self.rows_per_step = [b * micro_per_step for b in self.batch_sizes]
        self.steps_per_epoch = [max(1, math.ceil(len(r) / n)) for r, n in zip(self.rows, self.rows_per_step)]
        self._cache: tuple[tuple[int, int], np.ndarray] | None = None

    def at(self, step: int, total: int) -> tuple[PackedRows, int, int, np.ndarray]:
        """Step ``step`` (0-based) of a ``total``-step run -> (rows of its phase, micro-batch size, epoch key
        for masking, the step's global row indices ``[rows_per_step]``)."""
        phase = self.seq_schedule.phase_index(step, total)
        first = self.seq_schedule.boundaries(total)[phase]
        epoch, k = divmod(step - first, self.steps_per_epoch[phase])
        key = epoch + PHASE_EPOCH_STRIDE * phase
        n = self.rows_per_step[phase]
        if self._cache is None or self._cache[0] != (phase, epoch):
            perm = np.random.default_rng([self.seed, key]).permutation(len(self.rows[phase]))
            self._cache = ((phase, epoch), np.resize(perm, self.steps_per_epoch[phase] * n))
        return self.rows[phase], self.batch_sizes[phase], key, self._cache[1][k * n:(k + 1) * n]
