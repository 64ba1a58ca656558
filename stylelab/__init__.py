"""stylelab."""
