"""The durable local store: SQLite in WAL mode, written in batches by one writer thread."""

from .sqlite import Loss, SampleStore, StoredSignal
from .writer import StoreWriter, WriterStats

__all__ = ["Loss", "SampleStore", "StoreWriter", "StoredSignal", "WriterStats"]
