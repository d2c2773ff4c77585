"""Chemometric soft sensor: spectra in, concentrations out (issue 6; preprocessing so far)."""
