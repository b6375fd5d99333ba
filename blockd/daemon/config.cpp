// Placeholder: being written (see config.hpp).
