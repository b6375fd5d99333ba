// Placeholder: being written (see push_scheduler.hpp).
