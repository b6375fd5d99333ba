// Placeholder: being written (see client_manager.hpp).
