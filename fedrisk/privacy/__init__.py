"""Privacy machinery shared by banks and auditors: policy, accounting, ledger, keys, egress.

A bank's policy (:mod:`~fedrisk.privacy.policy`) decides what it will do; accountants
(:mod:`~fedrisk.privacy.accounting`) and DP-SGD (:mod:`~fedrisk.privacy.dpsgd`) spend and
measure ε; the signed ledger records every release; the egress policy says what may
leave. Nothing here reads a bank's table.
"""
