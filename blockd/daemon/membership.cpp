// Placeholder: being written (see membership.hpp).
