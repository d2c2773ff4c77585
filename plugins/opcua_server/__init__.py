"""Northbound OPC UA server sink: every gateway signal as a variable, secure by default."""
