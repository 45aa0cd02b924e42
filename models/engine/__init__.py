"""The compute engine under training: AllReduce algorithms over torch.distributed, the
processes that run them, (later) precision scheduling and checkpoints."""

from models.engine.allreduce import (
    ALGORITHMS,
    Communicator,
    HookState,
    Topology,
    all_reduce_coalesced,
    comm_hook,
    discover_topology,
)
from models.engine.distributed import DistributedError, Rendezvous, init_from_env, spawn
from models.engine.precision import (
    DynamicLossScaler,
    PrecisionConfig,
    PrecisionScheduler,
    fp32_sensitive_ops,
)

__all__ = [
    "ALGORITHMS",
    "Communicator",
    "DistributedError",
    "DynamicLossScaler",
    "HookState",
    "PrecisionConfig",
    "PrecisionScheduler",
    "Rendezvous",
    "Topology",
    "all_reduce_coalesced",
    "comm_hook",
    "discover_topology",
    "fp32_sensitive_ops",
    "init_from_env",
    "spawn",
]
