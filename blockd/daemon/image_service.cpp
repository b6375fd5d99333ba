// Placeholder: being written (see image_service.hpp).
