"""Shared by both kinds: reconciler, conditions and Events, hardened render, API access."""
