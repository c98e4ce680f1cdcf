"""Training with carried state: policies, optimiser groups, the loop, exact resume."""
