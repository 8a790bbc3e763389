"""The bank: its Flower ClientApp, its policy, DP-SGD rounds, evaluation and egress guard.

Everything here runs on a bank's own host, next to its own table. A bank checks every
proposed run against its own privacy policy (:mod:`fedrisk.privacy.policy`), spends ε
only through its signed ledger (write-ahead), and lets out only what the egress guard
recognises as the agreed protocol.
"""
