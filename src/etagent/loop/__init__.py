"""The agent runtime: the batched multi-turn agent loop and ARPO branching rollouts over it.

Generic: it knows a Generator and Tools, never a task (:mod:`etagent.agent` builds one for a task).
"""
