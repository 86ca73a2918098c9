"""Shipped artefacts (toy-wan weights, policies, calibrations); data only, located via importlib.resources."""
