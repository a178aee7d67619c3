"""Cost models of one training step, on plain data from :mod:`fxopt.graph`.

* :mod:`~fxopt.cost_models.fusion`: which values Inductor materialises (the kernels of a graph).
* :mod:`~fxopt.cost_models.memory`: liveness simulation, live bytes at every kernel and the peak
  (``simulate_partition`` for a partitioner's forward/backward graphs, ``simulate_plan`` for
  the joint graph plus a saved set).
* :mod:`~fxopt.cost_models.partition_view`: joint graph + saved set -> forward/backward views.
* :mod:`~fxopt.cost_models.runtime`: roofline per node or kernel, transfers, casts, measured mode.
* :mod:`~fxopt.cost_models.device`: device profiles (datasheets; CPU calibrated).
"""

from fxopt.cost_models.device import Hardware, calibrate_cpu, get_profile
from fxopt.cost_models.fusion import FusionRules, Kernel, kernels_of
from fxopt.cost_models.memory import (
                                      MemoryStep,
                                      MemoryTimeline,
                                      Step,
                                      simulate_partition,
                                      simulate_plan,
                                      simulate_steps,
)
from fxopt.cost_models.partition_view import keep_everything, saved_names, split_view
from fxopt.cost_models.runtime import cast_seconds, graph_seconds, node_seconds, transfer_seconds

__all__ = [
    "Hardware", "FusionRules", "Kernel", "MemoryStep", "MemoryTimeline", "Step",
    "calibrate_cpu", "cast_seconds", "get_profile", "graph_seconds",
    "keep_everything", "kernels_of", "node_seconds", "saved_names", "simulate_partition",
    "simulate_plan", "simulate_steps", "split_view", "transfer_seconds",
]
