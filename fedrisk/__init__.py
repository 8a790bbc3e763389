"""fedrisk: privacy-preserving federated credit-risk modeling."""
