"""Built-in plugins. Each subpackage uses only the public ``gateway`` API, like a vendor's would."""
