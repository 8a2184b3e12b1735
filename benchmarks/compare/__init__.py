"""Side-by-side comparison of structured-pruning tools on real data.

For each task (CIFAR-10 classification, CamVid / Cityscapes segmentation) one dense network is
trained once and shared; then every method gets the same number of further epochs:

* ``dense``: the dense baseline, trained for as long;
* ``lp_sigmoid`` / ``lp_hard_concrete``: lightning_prune's gates with the FLOPs controller,
  collapse, fine-tune;
* ``tp_magnitude`` / ``tp_group_norm``: Torch-Pruning's magnitude and group-norm pruners at the
  same FLOPs;
* ``model_pruning``: Lightning's ``ModelPruning`` (structured L1 masks) at the same channel
  ratio.

Every final network is measured the same way (accuracy / mIoU, ``lp.count_flops``,
``lp.count_params``, CPU latency at two batch sizes paired with the dense network, training
wall time, physically smaller or not). Run ``python -m benchmarks.compare --help``.
"""

from benchmarks.compare.cli import main

__all__ = ["main"]
