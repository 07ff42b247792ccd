"""Optional integrations (install their extras, e.g. `pip install aioclock[fastapi]`)."""
