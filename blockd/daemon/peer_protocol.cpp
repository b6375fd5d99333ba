// Placeholder: being written (see peer_protocol.hpp).
