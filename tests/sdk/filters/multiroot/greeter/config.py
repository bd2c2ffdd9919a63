"""The greeter's own `config` module: the guard project has one of the same name."""

HEADER = "x-greeting"
