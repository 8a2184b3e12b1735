"""Lightning callbacks for relaxed structured pruning.

Each works on its own and talks to the others only through the model (gate buffers, recorded
plans) and the loggers:

* :class:`TemperatureAnnealing` -- anneal the gates' temperature along a named schedule;
* :class:`SparsityMonitor` -- log kept fractions and costs (soft and hard) to any logger;
* :class:`NetworkCollapse` -- collapse to the compact network at the end (or in stages),
  log before/after costs and latency, save weights and the channel plan;
* :class:`RelaxedPruning` -- all of the above plus gates and penalty for an unmodified module;
* :class:`DynamicProbabilisticPruning` -- kernel/weight-granularity DPP masks (k of n kept per
  row), their entropy regulariser, annealing, folding, kept-MACs report and int8 export.

Example:
    >>> from lightning_prune.callbacks import RelaxedPruning, schedules
    >>> schedules.get_schedule("linear")(0.5, 5.0, 0.5)
    2.75
"""

from lightning_prune.callbacks import schedules
from lightning_prune.callbacks.collapse import NetworkCollapse
from lightning_prune.callbacks.dpp import DynamicProbabilisticPruning
from lightning_prune.callbacks.monitor import SparsityMonitor
from lightning_prune.callbacks.relaxed_pruning import RelaxedPruning
from lightning_prune.callbacks.temperature import TemperatureAnnealing

__all__ = [
    "DynamicProbabilisticPruning",
    "NetworkCollapse",
    "RelaxedPruning",
    "SparsityMonitor",
    "TemperatureAnnealing",
    "schedules",
]
