"""A whole consortium on one machine, on Flower's simulation engine."""

from fedrisk.simulations.runner import SimulationRequest, simulate

__all__ = ["SimulationRequest", "simulate"]
