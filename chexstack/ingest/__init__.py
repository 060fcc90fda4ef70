"""Uploads: validation, de-identification, the blob store and `xray.uploaded`.

- `uploader`: the upload path itself (`Uploader`), which holds the pseudonym key;
- `api`: the ingest service, that path behind a token-protected HTTP API (`chexstack ingest serve`),
  so clients that must not hold the key (the notebooks) can upload;
- `client`: `IngestClient`, the service from Python with the Uploader's methods.
"""
