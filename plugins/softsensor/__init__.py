"""Chemometric soft sensor: spectra in, concentrations out — the ``pls`` processor, its model
files and the ``patgw model`` command (see ``docs/model-file.md``)."""
