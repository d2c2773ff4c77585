"""Sparkplug B 3.0 sink: committed samples published as an edge node, store-and-forward."""
