"""Drivers: the async loops that connect the pure core to the adapters (control loop, event source,
heartbeats, identity, state files). They hold no protocol rules of their own."""
