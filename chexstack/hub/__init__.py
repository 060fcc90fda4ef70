"""The model information hub: projects -> model variations -> train and serve jobs, with spec snapshots.

store: the SQLite database; modelsconfig: TF Serving's models.config rewritten in place; handoff: a new
version into serving; service: the operations the CLI and the HTTP API share; api / client: the HTTP API.
"""
