"""The guard's own `config` module: the greeter project has one of the same name."""

STATUS = 403
