"""FineTuneJob: render (children), status (child state -> status) and handlers (Kopf)."""
