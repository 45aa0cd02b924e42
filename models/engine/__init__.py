"""The compute engine under training: AllReduce algorithms over torch.distributed, the
processes that run them and restart them, precision scheduling, checkpoints. The trainer
(``models.engine.trainer``) puts them together."""

from vigil.models.engine.allreduce import (
    ALGORITHMS,
    Communicator,
    HookState,
    Topology,
    all_reduce_coalesced,
    comm_hook,
    discover_topology,
)
from vigil.models.engine.checkpoint import load_checkpoint, save_checkpoint
from vigil.models.engine.distributed import (
    DistributedError,
    Rendezvous,
    init_from_env,
    spawn,
    supervise,
)
from vigil.models.engine.precision import (
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
    "load_checkpoint",
    "save_checkpoint",
    "spawn",
    "supervise",
]
