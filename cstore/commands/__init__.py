"""Sub-commands of the ``cstore`` CLI, one module per area."""
