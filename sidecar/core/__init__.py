"""Pure core: value objects and rules. Imports no I/O library and no adapter (checked by import-linter)."""
