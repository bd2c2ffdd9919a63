"""The control plane: xDS server, mesh model and the extension operator."""
