"""Vigil simulators: device models and a fleet of edge agents that publish them."""
