// Placeholder: being written (see node.hpp).
