"""Fused-op benchmark: fastcl's fused operators against the ways to write them in PyTorch.

Run it with ``fastcl bench ops [--quick] [--threads 1,2] [--device cpu|cuda] [--markdown] [--json PATH]``,
or ``python -m fastcl.benchmarks.ops``. Every number of one table comes from one run, with the
thread count pinned by ``torch.set_num_threads`` for each row.

Implementations ("impls") of each parameter-update op
------------------------------------------------------
``fused``            the public op ``fastcl.ops.<op>``: one call for the whole list.
``chain``            the eager in-place chain: the op written as a sequence of separate
                     in-place torch ops (``add_``, ``addcmul_``, ``div_`` ...) with the fewest
                     temporaries, applied tensor by tensor.
``loop``             the eager per-tensor Python loop of the specification,
                     ``fastcl.ops.reference.<op>`` (argument checks, out-of-place expression per
                     tensor, ``copy_`` into the destination).
``foreach``          the same chain written with ``torch._foreach_*`` ops over the whole list.
``compile``          ``torch.compile(chain, fullgraph=True, dynamic=False)`` (Inductor, C++).
``compile_foreach``  ``torch.compile`` of the ``foreach`` form.

Before anything is timed, every impl runs once on its own copy of the benchmark inputs and
its result is compared with ``fastcl.ops.reference`` on the same inputs (rtol 1e-5,
atol 1e-6): an impl that computes something else is reported as ``WRONG`` and not timed.

``prox_sgd`` is the out-of-place, differentiable step: every impl returns new tensors, whose
allocation (and, for large tensors, first-touch page faults) is part of what is timed.

Cases: one float32 tensor of 1e5, 1e6, 1e7 elements; the parameter list of the MLP
784-100-100-10 (6 tensors, 89,610 elements); the parameter list of the reduced ResNet-18 of
GEM / HAL / EMCL (:func:`resnet18_reduced_shapes`: 62 tensors, 1,109,240 elements).
``trajectory_shift_`` runs on the ResNet-18 list with T = 2, 8, 32 task learners.

Bytes moved (the GB/s column), per element of the parameter list, ``s`` = 4 bytes (float32):
the minimum traffic of the op, every tensor it touches read once and every tensor it writes
written once; temporaries of the unfused impls are not counted, so the GB/s of an unfused impl
is the *effective* bandwidth, comparable across impls.

==================== ======================================== ====================
op                   reads + writes                           bytes per element
==================== ======================================== ====================
prox_sgd_            params, grads, anchors, importance + params      5 s
prox_sgd             params, grads, anchors, importance + result      5 s
taylor_importance_   importance, grads, params + importance           4 s
emcl_meta_step_      params, fast_params, importance, meta_lrs,       8 s
                     grads + params, importance, meta_lrs
trajectory_shift_    phi, thetas (T) + phi, thetas (T)          (2 + 2T) s
copy_                src + dst                                        2 s
==================== ======================================== ====================

``% copy_`` is the op's GB/s over the GB/s of ``dst.copy_(src)`` (2 s per element) measured in
the same rounds, at the same thread count, on a copy whose footprint (src + dst) equals the
op's footprint (every distinct tensor it touches), so both run from the same level of the
memory hierarchy. It can exceed 100%: ``copy_`` writes to lines it never read (a
write-allocate read the count above does not see), an in-place op writes lines it just read.

Timing (:func:`time_interleaved`): per (op, case, threads), every impl that passed validation
and ``copy_`` are warmed up, then timed in rounds of one block of calls each (blocks of about
``min_run_time / 20`` seconds, the order rotating), until each has run ``min_run_time`` seconds
in at least 5 rounds; the figure is the median over blocks of the time per call. Interleaving
makes a change of machine load hit every impl of a row alike, so the ratios stay meaningful on
a busy machine even when the absolute times do not.

Memory ops (``ring_insert+sample``): a batch of B = 10 MNIST-size examples (784 float32) is
inserted into per-(task, class) rings (20 tasks x 10 classes x m = 5 slots, every ring full,
the batch goes to task 19), then n = 10 examples are sampled from all 20 tasks and gathered
(``index_select``). ``fused``: ``ring_insert_`` + ``ring_sample`` + ``index_select``; ``loop``:
a per-example Python loop that copies each example into its slot by indexing and bumps its
counter (the way Mammoth's buffer inserts), then ``torch.randint`` + ``index_select``;
``reference``: ``fastcl.ops.reference``. ``ring_sample``: the sample half alone, fused
(``ring_sample`` + ``index_select``) against ``randint`` + ``index_select``. With every ring
full, ``randint`` over the 1000 rows is the same distribution as ``ring_sample``.
``reservoir_insert_``: the batch into a 1000-row reservoir after 5000 examples seen, against
the per-example loop of algorithm R (one uniform draw per example, as Mammoth's reservoir).

Modules: :mod:`.cases` (constants of the benchmarked calls, shapes, cases, :class:`Op`),
:mod:`.update_ops` and :mod:`.memory_ops` (the ops and their impls), :mod:`.validation` (the
registry :data:`OPS` and the check against the reference), :mod:`.timing`, :mod:`.runner`,
:mod:`.tables`, :mod:`.command` (``fastcl bench ops``).
"""

from __future__ import annotations

from .cases import (ATOL, BATCH, DECAY, FEAT, FLOAT, ITEM, LR, MEMORY_IMPLS, META_LR, N_SAMPLE, NUM_CLASSES,
                    NUM_TASKS, PROX, RING_M, RTOL, UPDATE_IMPLS, Case, Op, bytes_moved, footprint, mlp_shapes,
                    resnet18_reduced_shapes)
from .command import add_arguments, main, run_from_args
from .memory_ops import ring_insert_fused, ring_insert_loop, sample_fused, sample_randint, sample_reference
from .runner import Results, fused_available, plan, run
from .tables import format_tables, memory_table, update_table
from .timing import copy_callable, time_fn, time_interleaved
from .update_ops import prox_chain, prox_foreach
from .validation import OPS, cases_for, check_device, clone_state, expected_state, state_to, validate

__all__ = [
    "ATOL",
    "BATCH",
    "DECAY",
    "FEAT",
    "FLOAT",
    "ITEM",
    "LR",
    "MEMORY_IMPLS",
    "META_LR",
    "N_SAMPLE",
    "NUM_CLASSES",
    "NUM_TASKS",
    "PROX",
    "RING_M",
    "RTOL",
    "UPDATE_IMPLS",
    "Case",
    "Op",
    "bytes_moved",
    "footprint",
    "mlp_shapes",
    "resnet18_reduced_shapes",
    "add_arguments",
    "main",
    "run_from_args",
    "ring_insert_fused",
    "ring_insert_loop",
    "sample_fused",
    "sample_randint",
    "sample_reference",
    "Results",
    "fused_available",
    "plan",
    "run",
    "format_tables",
    "memory_table",
    "update_table",
    "copy_callable",
    "time_fn",
    "time_interleaved",
    "prox_chain",
    "prox_foreach",
    "OPS",
    "cases_for",
    "check_device",
    "clone_state",
    "expected_state",
    "state_to",
    "validate",
]
