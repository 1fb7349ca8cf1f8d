"""CLI commands of the workload area (placeholder until that area lands)."""


def register(subparsers) -> None:
    pass
