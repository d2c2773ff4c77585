"""OPC UA client driver: subscribes to a server's variables (e.g. a bioreactor controller's)."""
