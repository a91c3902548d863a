#include "util/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/error.h"

namespace ew {

int open_regular_file(const std::string& path, size_t* size) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("cannot open ", path, ": ", std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail("cannot stat ", path, ": ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, ": not a regular file");
  }
  // Regular files ignore O_NONBLOCK for reads; clear it anyway so later reads are plain.
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  *size = static_cast<size_t>(st.st_size);
  return fd;
}

std::string read_regular_file(const std::string& path, size_t max_bytes) {
  size_t size = 0;
  const int fd = open_regular_file(path, &size);
  if (size > max_bytes) {
    ::close(fd);
    fail(path, ": ", size, " bytes, more than the ", max_bytes, " such a file may have");
  }
  std::string out(size, '\0');
  size_t got = 0;
  while (got < size) {
    const ssize_t r = ::read(fd, &out[got], size - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      const int err = errno;
      ::close(fd);
      fail("cannot read ", path, r < 0 ? std::string(": ") + std::strerror(err) : std::string(": file shrank while read"));
    }
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  return out;
}

}  // namespace ew
