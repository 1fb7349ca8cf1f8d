"""CLI commands of the deploy area (placeholder until that area lands)."""


def register(subparsers) -> None:
    pass
