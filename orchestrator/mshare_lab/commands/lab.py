"""CLI commands of the lab area (placeholder until that area lands)."""


def register(subparsers) -> None:
    pass
