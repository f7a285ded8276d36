"""Tools that use the assistant from outside, as a user would: benchmarks of serving and scale. No serving module imports them."""
