#include "engine/safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>

#include "util/error.h"
#include "util/file.h"
#include "util/json.h"

namespace ew {
namespace {

bool parse_dtype(const std::string& s, DType* out) {
  if (s == "F32") *out = DType::F32;
  else if (s == "F16") *out = DType::F16;
  else if (s == "BF16") *out = DType::BF16;
  else return false;
  return true;
}

// Closes a file descriptor on every path out of the constructor.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Validates one header entry and builds its view over the data section.
TensorView parse_entry(const std::string& path, const std::string& name, const json::Value& e, const uint8_t* data,
                       uint64_t data_size) {
  if (!e.is_object()) fail(path, ": tensor ", name, ": header entry is not an object");
  const json::Value* dt = e.find("dtype");
  const json::Value* shape = e.find("shape");
  const json::Value* offs = e.find("data_offsets");
  if (!dt || !dt->is_string()) fail(path, ": tensor ", name, ": missing or non-string dtype");
  if (!shape || !shape->is_array()) fail(path, ": tensor ", name, ": missing or non-array shape");
  if (!offs || !offs->is_array() || offs->as_array().size() != 2)
    fail(path, ": tensor ", name, ": data_offsets must be an array [begin, end]");

  TensorView v;
  if (!parse_dtype(dt->as_string(), &v.dtype))
    fail(path, ": tensor ", name, " has dtype ", dt->as_string(), "; only F32, F16 and BF16 are supported");

  // numel in unsigned 64-bit with an overflow guard: a hostile shape must not wrap.
  uint64_t numel = 1;
  bool overflow = false;
  for (const json::Value& d : shape->as_array()) {
    if (!d.is_integer() || d.as_int() < 0)
      fail(path, ": tensor ", name, ": shape entries must be non-negative integers");
    const uint64_t n = static_cast<uint64_t>(d.as_int());
    if (n != 0 && numel > std::numeric_limits<uint64_t>::max() / n) overflow = true;
    numel *= n;
    v.shape.push_back(d.as_int());
  }
  const json::Value& b = offs->as_array()[0];
  const json::Value& en = offs->as_array()[1];
  if (!b.is_integer() || !en.is_integer() || b.as_int() < 0 || en.as_int() < b.as_int())
    fail(path, ": tensor ", name, ": data_offsets must be non-negative integers with begin <= end");
  const uint64_t begin = static_cast<uint64_t>(b.as_int()), end = static_cast<uint64_t>(en.as_int());
  if (end > data_size)
    fail(path, ": tensor ", name, ": data_offsets [", begin, ", ", end, "] run past the data section (", data_size,
         " bytes; file truncated?)");
  const uint64_t esize = dtype_size(v.dtype);
  if (overflow || numel > std::numeric_limits<uint64_t>::max() / esize || numel * esize != end - begin)
    fail(path, ": tensor ", name, ": shape ", shape_str(v.shape), " of ", dtype_name(v.dtype), " needs ",
         overflow ? std::string("too many") : std::to_string(numel * esize), " bytes but data_offsets span ",
         end - begin);
  v.data = data + begin;
  return v;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  size_t file_size = 0;
  Fd f{open_regular_file(path, &file_size)};
  const uint64_t size = file_size;
  if (size < 8) fail(path, ": truncated safetensors file (", size, " bytes, shorter than the 8-byte header length)");

  map_ = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, f.fd, 0);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail("cannot mmap ", path, " (", size, " bytes): ", std::strerror(errno));
  }
  map_size_ = size;
  try {
    const uint8_t* bytes = static_cast<const uint8_t*>(map_);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little-endian
    if (header_len > size - 8)
      fail(path, ": safetensors header length ", header_len, " runs past the end of the file (", size,
           " bytes; truncated or not a safetensors file)");
    const json::Value header =
        json::parse(reinterpret_cast<const char*>(bytes + 8), static_cast<size_t>(header_len), path + " (header)");
    if (!header.is_object()) fail(path, ": safetensors header is not a JSON object");
    const uint8_t* data = bytes + 8 + header_len;
    const uint64_t data_size = size - 8 - header_len;
    struct Range {
      const uint8_t* begin;
      size_t size;
      const std::string* name;
    };
    std::vector<Range> ranges;
    for (const auto& [name, entry] : header.as_object()) {
      if (name == "__metadata__") {
        if (!entry.is_object()) fail(path, ": __metadata__ is not an object");
        continue;
      }
      const TensorView& v = tensors_.emplace(name, parse_entry(path, name, entry, data, data_size)).first->second;
      if (v.nbytes() > 0) ranges.push_back({static_cast<const uint8_t*>(v.data), v.nbytes(), &name});
    }
    // Two tensors sharing bytes means a corrupt header (the format forbids it).
    std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
    for (size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i - 1].begin + ranges[i - 1].size > ranges[i].begin)
        fail(path, ": tensors ", *ranges[i - 1].name, " and ", *ranges[i].name, " overlap in the data section");
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const TensorView& SafetensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail("missing tensor ", name, " in ", path_);
  return it->second;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

namespace {

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

constexpr size_t kMaxIndexBytes = 64 << 20;  // a weight_map of a million tensors

}  // namespace

std::unique_ptr<TensorStore> TensorStore::open_file(const std::string& path) {
  std::unique_ptr<TensorStore> s(new TensorStore());
  s->origin_ = path;
  s->files_.push_back(std::make_unique<SafetensorsFile>(path));
  for (const std::string& n : s->files_.back()->names()) s->index_[n] = s->files_.back().get();
  return s;
}

std::unique_ptr<TensorStore> TensorStore::open_dir(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) fail("not a directory: ", dir);
  std::unique_ptr<TensorStore> s(new TensorStore());
  s->origin_ = dir;

  const std::string index_path = dir + "/model.safetensors.index.json";
  if (file_exists(index_path)) {
    const json::Value idx = json::parse(read_regular_file(index_path, kMaxIndexBytes), index_path);
    const json::Value* wm = idx.find("weight_map");
    if (!wm || !wm->is_object()) fail(index_path, ": missing \"weight_map\" object");
    std::map<std::string, SafetensorsFile*> shards;
    for (const auto& [name, shard] : wm->as_object()) {
      if (!shard.is_string()) fail(index_path, ": weight_map entry for ", name, " is not a file name");
      const std::string& fname = shard.as_string();
      if (fname.empty() || fname.find('/') != std::string::npos)
        fail(index_path, ": weight_map entry for ", name, " names \"", fname, "\", not a file in ", dir);
      auto it = shards.find(fname);
      if (it == shards.end()) {
        const std::string p = dir + "/" + fname;
        if (!file_exists(p)) fail(index_path, ": shard ", fname, " (listed for tensor ", name, ") is missing");
        s->files_.push_back(std::make_unique<SafetensorsFile>(p));
        it = shards.emplace(fname, s->files_.back().get()).first;
      }
      if (!it->second->has(name))
        fail(index_path, ": tensor ", name, " is listed in shard ", fname, " but not stored in it");
      s->index_[name] = it->second;
    }
    // A tensor a shard holds but the index does not list means the two disagree.
    for (const auto& f : s->files_)
      for (const std::string& n : f->names())
        if (!s->index_.count(n))
          fail(index_path, ": tensor ", n, " is stored in ", f->path(), " but not listed in the weight_map");
    return s;
  }

  std::vector<std::string> files;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0) files.push_back(n);
    }
    ::closedir(d);
  } else {
    fail("cannot list ", dir, ": ", std::strerror(errno));
  }
  if (files.empty()) fail("no *.safetensors files in ", dir);
  std::sort(files.begin(), files.end());
  for (const std::string& n : files) {
    s->files_.push_back(std::make_unique<SafetensorsFile>(dir + "/" + n));
    const SafetensorsFile* f = s->files_.back().get();
    for (const std::string& t : f->names()) {
      auto [it, fresh] = s->index_.emplace(t, f);
      if (!fresh) fail("tensor ", t, " is defined twice: in ", it->second->path(), " and in ", f->path());
    }
  }
  return s;
}

bool TensorStore::has(const std::string& name) const { return index_.count(name) != 0; }

const TensorView& TensorStore::get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("missing tensor ", name, " in ", origin_);
  return it->second->get(name);
}

const TensorView& TensorStore::get_checked(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorView& v = get(name);
  if (v.shape != shape)
    fail("tensor ", name, " has shape ", shape_str(v.shape), ", expected ", shape_str(shape), " (in ",
         index_.at(name)->path(), ")");
  return v;
}

const std::string& TensorStore::file_of(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("missing tensor ", name, " in ", origin_);
  return it->second->path();
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& kv : index_) out.push_back(kv.first);
  return out;
}

bool TensorStore::maps(const void* p) const {
  for (const auto& f : files_)
    if (f->maps(p)) return true;
  return false;
}

void TensorStore::release_pages(const void* data, size_t bytes) const {
  if (!data || bytes == 0 || !maps(data)) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t e = (reinterpret_cast<uintptr_t>(data) + bytes) / page * page;
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);  // best effort
}

}  // namespace ew
