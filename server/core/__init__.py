"""The transport-neutral service: the v2 operations (service), the registry of served models, the
request codec, server-wide limits and the typed errors. rpc/ adapts it; it drives batching/.

Nothing is imported here: batching/ and runtime/ import core.errors, which must not pull in the
service (and with it batching/) while batching/ is still being imported.
"""
