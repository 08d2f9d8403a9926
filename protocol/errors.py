"""The protocol package's one exception tree.

    ProtocolError          the peer sent bytes that are not valid at this layer: close or refuse
    ├── EngineIOError      not an Engine.IO v4 packet or payload
    └── SocketIOError      not a Socket.IO v5 packet

Decoders raise nothing else, whatever the input (fuzzed with hypothesis in tests/test_protocol_*.py).
"""


class ProtocolError(ValueError):
    """The peer broke the protocol; the message says how. The connection should be closed."""


class EngineIOError(ProtocolError):
    pass


class SocketIOError(ProtocolError):
    pass
