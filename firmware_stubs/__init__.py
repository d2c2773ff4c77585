"""Emulated process instruments (device-side firmware stand-ins) for tests, demos and docs."""
