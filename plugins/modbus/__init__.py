"""Modbus TCP/RTU driver: register maps declared in config or in named profiles."""
