"""Behaviour over time: detectors that keep per-entity state in event time (replay,
fan-out, activity, travel, population) and the engine that runs them per shard."""
