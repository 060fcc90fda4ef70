"""Security tier: what a local user or a notebook user could try, probed on the deployed platform."""
