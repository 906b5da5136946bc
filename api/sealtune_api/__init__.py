"""Sealtune's one typed contract: every custom resource, the trainer's config and summary.

pydantic and pyyaml only; this package imports nothing else of Sealtune's. The operator
and the trainer both stand on it and never import each other.
"""
