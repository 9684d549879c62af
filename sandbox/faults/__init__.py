"""Faults an interviewer can plant in a world: one module per fault, and the registry."""
