"""Residence-time traceability: RTD models, the ``rtd_trace`` processor, genealogy export."""
