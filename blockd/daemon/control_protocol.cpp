// Placeholder: being written (see control_protocol.hpp).
