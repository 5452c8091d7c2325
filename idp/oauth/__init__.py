"""Protocol layer: Authlib wiring that calls the domain."""
