// Placeholder: being written (see master_link.hpp).
