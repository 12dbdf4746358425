"""Per-image predictions: rows keyed by dataset index, gathered over all processes
(:class:`IndexedCollector`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

__all__ = ["IndexedCollector"]

#: What :class:`IndexedCollector` stores (floating columns in the metric's dtype, integers as
#: int64, bools as uint8), by code for the dtype exchange of an empty process.
_STORED_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int64,
    torch.uint8,
)
_MAX_COLUMN_NDIM = 6


class IndexedCollector(Metric):
    """Rows keyed by dataset index, with named columns, gathered over all processes.

    ``IndexedCollector(["pred", "target"])`` keeps, for every evaluated or predicted image, its
    dataset ``index`` and one value per column (a score, a row of logits, a flag). States are
    ``cat`` lists, so after ``compute`` every process holds the rows of all processes.

    * ``update(index, **columns)``: ``index`` (B,) integers and EXACTLY the named columns, each a
      tensor with B rows ((B,) or (B, ...)). Floating columns are stored in the metric's dtype
      (float32 by default: half precision from AMP is upcast), integer columns as int64, bool
      columns as uint8 (gathers on every backend) and returned as bool. ``update`` never reads
      values on the host (no device sync per step).
    * ``compute()``: ``{"index": (N,) long, <column>: (N, ...)}`` sorted by index. It raises
      ``ValueError`` if an index occurs more than once: duplicates mean that a sampler padded the
      set (use ``UnrepeatedDistributedSampler``) or the same batch was fed twice.

    Shards may be uneven, and a process may have no row at all (fewer images than processes):
    before the gather, such a process learns each column's dtype and row shape from the others
    (one small extra ``all_gather``), so every process contributes tensors of the same kind.

    Example:
        >>> import torch
        >>> collector = IndexedCollector(["pred", "readable"])
        >>> collector.update(torch.tensor([2, 0]), pred=torch.tensor([5.5, 4.0]),
        ...                  readable=torch.tensor([True, False]))
        >>> collector.update(torch.tensor([1]), pred=torch.tensor([3.0]),
        ...                  readable=torch.tensor([True]))
        >>> table = collector.compute()
        >>> table["index"], table["pred"], table["readable"]
        (tensor([0, 1, 2]), tensor([4.0000, 3.0000, 5.5000]), tensor([False,  True,  True]))
    """

    is_differentiable: bool = False
    higher_is_better: bool | None = None
    full_state_update: bool = False

    index: list[Tensor]

    def __init__(self, columns: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(columns, str):
            raise TypeError(f"columns must be a sequence of names, not the string {columns!r}")
        names = tuple(columns)
        for name in names:
            if not (isinstance(name, str) and name.isidentifier()):
                raise ValueError(f"column names must be Python identifiers; got {name!r}")
            if name == "index" or hasattr(self, name):
                raise ValueError(f"column name {name!r} is taken (by the index or the metric)")
        if len(set(names)) != len(names):
            raise ValueError(f"column names must be unique; got {list(names)}")
        self.columns = names
        self.add_state("index", default=[], dist_reduce_fx="cat")
        for name in names:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, index: Tensor, **columns: Tensor) -> None:
        """Add a batch: dataset indices (B,) (integers) and one (B, ...) tensor per column."""
        if set(columns) != set(self.columns):
            raise ValueError(
                f"update needs exactly the columns {list(self.columns)}; got {sorted(columns)}"
            )
        if index.ndim != 1:
            raise ValueError(f"index must have shape (B,); got {tuple(index.shape)}")
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise TypeError(f"dataset indices must be integers; got dtype {index.dtype}")
        for name in self.columns:
            value = columns[name]
            if value.ndim == 0 or value.shape[0] != index.shape[0]:
                raise ValueError(
                    f"column {name!r} must have one row per index ({index.shape[0]}); got "
                    f"shape {tuple(value.shape)}"
                )
            if value.is_complex():
                raise TypeError(f"column {name!r}: complex values are not supported")
            if value.ndim > _MAX_COLUMN_NDIM:
                raise ValueError(f"column {name!r}: at most {_MAX_COLUMN_NDIM} dimensions")
        self.index.append(index.detach().long())
        for name in self.columns:
            getattr(self, name).append(self._stored(columns[name].detach()))

    def _stored(self, value: Tensor) -> Tensor:
        if value.dtype == torch.bool:
            return value.to(torch.uint8)
        if value.is_floating_point():
            return value.to(self.dtype)
        return value.long()

    def compute(self) -> dict[str, Tensor]:
        """All collected rows sorted by dataset index; raises ValueError on a repeated index."""
        index = self._gathered("index").long()  # all processes empty: torchmetrics gave float32
        order = torch.argsort(index, stable=True)
        index = index[order]
        repeated = index[1:][index[1:] == index[:-1]]
        if repeated.numel() > 0:
            shown = torch.unique(repeated)[:10].tolist()
            raise ValueError(
                f"IndexedCollector: {repeated.numel()} repeated dataset indices "
                f"(first: {shown}); the evaluation sampler padded the set (use "
                "UnrepeatedDistributedSampler) or a batch was fed twice"
            )
        table = {"index": index}
        for name in self.columns:
            value = self._gathered(name)[order]
            table[name] = value.bool() if value.dtype == torch.uint8 else value
        return table

    def _gathered(self, name: str) -> Tensor:
        value = getattr(self, name)
        if isinstance(value, list) and not value:  # nothing seen anywhere
            return torch.empty(0, dtype=self.dtype, device=self.device)
        return dim_zero_cat(value)

    def sync(
        self,
        dist_sync_fn: Callable | None = None,
        process_group: Any | None = None,
        should_sync: bool = True,
        distributed_available: Callable | None = None,
    ) -> None:
        """torchmetrics' ``sync``, after giving an empty process's states their dtype and shape.

        torchmetrics stands in an empty float32 (0,) tensor for an empty ``cat`` list; gathered
        with the int64 indices or (B, K) rows of the other processes, that fails (gloo: "Received
        data size doesn't match expected size") or hangs.
        """
        available = distributed_available or self.distributed_available_fn
        if should_sync and callable(available) and available():
            self._shape_empty_states(dist_sync_fn or gather_all_tensors, process_group)
        super().sync(dist_sync_fn, process_group, should_sync, distributed_available)

    def _shape_empty_states(self, gather: Callable, process_group: Any | None) -> None:
        names = ("index", *self.columns)
        width = 2 + _MAX_COLUMN_NDIM  # per state: dtype code, ndim, row shape (padded with -1)
        local = []
        for name in names:
            value = getattr(self, name)
            row = [-1] * width
            if isinstance(value, list) and value:
                first = value[0]
                row[:2] = [_STORED_DTYPES.index(first.dtype), first.ndim]
                row[2 : 1 + first.ndim] = first.shape[1:]
            local.append(row)
        meta = torch.tensor(local, dtype=torch.long, device=self.device)
        everyone = torch.stack(gather(meta, group=process_group or self.process_group)).tolist()
        for k, name in enumerate(names):
            value = getattr(self, name)
            if not isinstance(value, list) or value:  # this process has rows (or is synced)
                continue
            known = [rows[k] for rows in everyone if rows[k][0] >= 0]
            if known:  # else: no process has rows, torchmetrics' placeholders agree
                code, ndim, *shape = known[0]
                empty = torch.empty(0, *shape[: ndim - 1], dtype=_STORED_DTYPES[code])
                setattr(self, name, [empty.to(self.device)])
