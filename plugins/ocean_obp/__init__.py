"""Ocean Insight spectrometers over the Ocean Binary Protocol (OBP) on a serial line."""
