"""The wire contract between the vehicle agent and the fleet server: topics, ids, JSON Schemas and the command
envelope (`commands`: command_id, issued_at, expires_at).

Both halves import this package, so the contract is written down once.
"""
