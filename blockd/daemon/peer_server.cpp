// Placeholder: being written (see peer_server.hpp).
