"""Browser tier: Playwright + Debian's Chromium against the playbook's JupyterLab; notebooks run headless."""
