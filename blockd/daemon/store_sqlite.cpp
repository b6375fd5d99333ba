// Placeholder: being written (see store_sqlite.hpp).
