// Reading files a client may name (adapter directories): only regular files, of
// bounded size, opened without blocking, so a FIFO, a device or /dev/zero fails
// with a message that names the file (and never quotes its contents).
#pragma once
#include <cstddef>
#include <string>

namespace ew {

// The whole of `path`, which must be a regular file of at most `max_bytes`.
std::string read_regular_file(const std::string& path, size_t max_bytes);

// An open, read-only descriptor of the regular file `path` (the caller closes it);
// *size receives its length. Fails for anything that is not a regular file.
int open_regular_file(const std::string& path, size_t* size);

}  // namespace ew
