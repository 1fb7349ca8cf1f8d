"""CLI commands of the results area (placeholder until that area lands)."""


def register(subparsers) -> None:
    pass
