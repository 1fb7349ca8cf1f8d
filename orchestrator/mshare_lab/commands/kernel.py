"""CLI commands of the kernel area (placeholder until that area lands)."""


def register(subparsers) -> None:
    pass
