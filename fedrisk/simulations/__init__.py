"""A whole consortium on one machine, on Flower's simulation engine."""

from fedrisk.simulations.runner import SimulationError, SimulationRequest, simulate

__all__ = ["SimulationError", "SimulationRequest", "simulate"]
