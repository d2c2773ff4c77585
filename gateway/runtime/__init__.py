"""The runtime: one supervisor running instruments, the store writer, sinks and emulators."""

from .supervisor import Gateway, RunSummary

__all__ = ["Gateway", "RunSummary"]
