"""OCI push, pull and inspect of extension images, and the verified module cache."""
