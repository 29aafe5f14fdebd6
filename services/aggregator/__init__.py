"""The aggregator: raw battery readings in, Home Assistant device documents out (see docs/entities.md)."""
