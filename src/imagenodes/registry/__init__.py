"""The host registry: plugin manager, discovery, catalog, execution, events, errors."""
