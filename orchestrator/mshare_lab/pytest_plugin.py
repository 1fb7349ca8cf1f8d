"""pytest plugin of mshare-lab (registered through the pytest11 entry point).

Placeholder until the orchestrator area lands: ``--mshare-matrix`` turns a matrix file
into test items.
"""
