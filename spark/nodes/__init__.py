"""Nodes and their channels; see ``spark.nodes.channels``."""
