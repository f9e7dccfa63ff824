"""The wire contract between the vehicle agent and the fleet server: topics, ids and JSON Schemas.

Both halves import this package, so the contract is written down once.
"""
