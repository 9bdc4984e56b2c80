"""History tools on the public API of llm_es and projections (rebuild, verify, audit, tail).

This package is a placeholder until its own issue; `llm-replay` says so.
"""
