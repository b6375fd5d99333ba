// Placeholder: being written (see tgt_admin.hpp).
