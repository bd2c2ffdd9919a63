"""Imported only inside a callback: found at run time by the module's own finder."""


def greeting(name: str) -> str:
    return f"hello {name}"
