"""What the test suites share: real servers on ephemeral ports, generated models, certificates, requests.

Importable as `support` (pytest's `pythonpath` in pyproject.toml); tests never import each other.
"""
