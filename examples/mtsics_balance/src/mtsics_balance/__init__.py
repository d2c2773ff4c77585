"""A Mettler-Toledo MT-SICS balance for PAT Gateway: driver (:mod:`.driver`) and emulator
(:mod:`.emulator`), registered by :mod:`.plugin`."""
