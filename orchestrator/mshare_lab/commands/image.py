"""CLI commands of the image area (placeholder until that area lands)."""


def register(subparsers) -> None:
    pass
