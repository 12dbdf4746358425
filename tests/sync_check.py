"""A CPU check for host-device synchronisation: run code under :class:`HostSyncRecorder` and it
records every tensor operation that, on a GPU, would make the host wait for the device.

On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` catches such syncs, but CI has no GPU. The
operations that sync are few and visible at the dispatcher: reading a value on the host
(``.item()``, ``bool(tensor)``, ``float(tensor)`` -> ``_local_scalar_dense``) and operations
whose output shape depends on tensor values (boolean-mask indexing and assignment, ``nonzero``,
``masked_select``, ``unique``, ``repeat_interleave`` without ``output_size``). Recording them on
the CPU finds the same syncs the GPU would hit, in any test.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: Operations whose result the host must wait for (value reads, data-dependent shapes).
SYNCING_OPS = {
    "aten._local_scalar_dense.default",
    "aten.nonzero.default",
    "aten.nonzero_static.default",
    "aten.masked_select.default",
    "aten._unique2.default",
    "aten.unique_dim.default",
    "aten.unique_consecutive.default",
}

#: Operations that sync only when indexed with a boolean mask.
MASK_INDEXING_OPS = {"aten.index.Tensor", "aten.index_put.default", "aten.index_put_.default"}


def _has_bool_index(args: tuple[Any, ...]) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
    )


class HostSyncRecorder(TorchDispatchMode):
    """Records the syncing operations run inside ``with HostSyncRecorder() as rec:``
    in ``rec.syncs`` (operation names, in order)."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in SYNCING_OPS:
            self.syncs.append(name)
        elif name in MASK_INDEXING_OPS and _has_bool_index(args):
            self.syncs.append(f"{name} (boolean mask)")
        elif name == "aten.repeat_interleave.Tensor" and not (kwargs or {}).get("output_size"):
            self.syncs.append(name)
        return func(*args, **(kwargs or {}))
