"""Developer kit: the local control plane, tiny models, PII corpora, demo helpers, dev TLS.

Installed by `make venv` (the `dev` setup) only and copied into no image: nothing in
`sealtune_api`, `sealtune_operator` or `sealtune_trainer` may import it.
"""
