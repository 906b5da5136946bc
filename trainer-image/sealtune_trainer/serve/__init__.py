"""`sealtune serve`: the hardened, OpenAI-compatible inference server for encrypted adapters.

This package's top level stays light (no torch import) so that the operator can import
`sealtune_api.serve_config` to render the server's ConfigMap.
"""
