"""Side-by-side comparison of structured-pruning tools on real data (issue 11's protocol).

For each task (CIFAR-10 classification, CamVid / Cityscapes segmentation) one dense network is
trained once and shared; then every method gets the same number of further epochs with the
same training recipe, once per seed:

* ``dense``: the dense baseline, trained for as long;
* ``lp_sigmoid`` / ``lp_hard_concrete``: lightning_prune's library defaults with only the FLOPs
  target, one fit (structure learning, collapse, training of the compact network);
* ``tp_magnitude`` / ``tp_group_norm``: Torch-Pruning's magnitude and group-norm pruners, their
  ratio searched to the same FLOPs (within 1 point);
* ``model_pruning``: Lightning's ``ModelPruning`` (structured L1 masks) at the same channel
  ratio.

Every final network is measured the same way (accuracy / mIoU, ``lp.count_flops``,
``lp.count_params``, CPU latency at two batch sizes paired with the dense network, training
wall time, physically smaller or not); the report gives mean ± std over the seeds and the
floors. Run ``python -m benchmarks.compare --help``.
"""

from benchmarks.compare.cli import main

__all__ = ["main"]
