"""ModelServe: render (children), status (adapter + Deployment -> status) and handlers (Kopf)."""
