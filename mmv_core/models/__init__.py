"""dm-haiku implementations of the MMV networks."""
