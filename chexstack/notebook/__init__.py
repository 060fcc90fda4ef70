"""Notebook helpers: the upload panel and result cards (upload.py, cards.py) and the models and
training overview (overview.py), built on the same settings and code paths as the services."""
