"""Anomaly detection: batch-evolution PCA (T², Q), per-signal checks, alarms (``anomaly``)."""
