"""Sans-IO protocol code: wire formats and validation as pure functions and msgspec Structs.

Nothing in this package imports trio or touches a socket; every piece is tested synchronously.
"""
