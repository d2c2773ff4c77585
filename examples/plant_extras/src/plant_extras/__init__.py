"""Plant extras: a CSV-file sink, a moving-average processor and ``patgw`` commands."""
