/// @file atomic_file.hpp
/// @brief Whole-file I/O for maskpos writers and readers: an all-or-nothing write (temporary file in the
/// same directory, then rename) and a bounded whole-file read. Failures throw std::runtime_error naming
/// the file.
#pragma once

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#define MASKPOS_DETAIL_POSIX_FILES 1
#endif

namespace maskpos::detail {

/// Throws std::runtime_error("maskpos: <what>: <path>: <problem>").
[[noreturn]] inline void throw_file_error(const std::string& what, const std::string& path,
                                          const std::string& problem) {
  throw std::runtime_error("maskpos: " + what + ": " + path + ": " + problem);
}

/// A name for the temporary file next to `target`: "<target>.tmp-<random hex>". Unique enough that two
/// threads or processes writing the same target do not share a temporary (the POSIX path additionally
/// creates it with O_EXCL and retries on a clash).
inline std::string temporary_name_for(const std::string& target) {
  static std::atomic<std::uint64_t> counter{0};
  std::random_device device;
  std::uint64_t bits = (static_cast<std::uint64_t>(device()) << 32) ^ static_cast<std::uint64_t>(device());
  bits ^= static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  bits ^= static_cast<std::uint64_t>(std::hash<std::thread::id>{}(std::this_thread::get_id())) << 7;
  bits += 0x9E3779B97F4A7C15ull * ++counter;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(bits));
  return target + ".tmp-" + hex;
}

/// Writes `size` bytes to `path` so that readers see either the old file (or none) or the complete new
/// one, never a half-written file: the bytes go to a temporary file in the same directory, which is
/// flushed (fsync on POSIX), closed and renamed over `path`. On any failure the temporary is removed and
/// std::runtime_error names the file and the problem; `path` is then left untouched.
///
/// Thread-safety: safe to call concurrently, also for the same path (the last rename wins).
/// \param path  destination; its directory must exist and be writable
/// \param data  the bytes (may be null when size is 0)
inline void write_file_atomically(const std::string& path, const void* data, std::size_t size) {
  const char* bytes = static_cast<const char*>(data);
  if (path.empty()) throw_file_error("write", "\"\"", "empty file name");
  std::string temporary;
#ifdef MASKPOS_DETAIL_POSIX_FILES
  int fd = -1;
  for (int attempt = 0; attempt < 16 && fd < 0; ++attempt) {
    temporary = temporary_name_for(path);
    fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) throw_file_error("write", path, std::string("cannot create a temporary file: ") + std::strerror(errno));
  std::size_t written = 0;
  while (written < size) {
    const ::ssize_t n = ::write(fd, bytes + written, size - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string problem = std::string("write failed: ") + std::strerror(n < 0 ? errno : EIO);
      ::close(fd);
      ::unlink(temporary.c_str());
      throw_file_error("write", path, problem);
    }
    written += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const std::string problem = std::string("flush failed: ") + std::strerror(errno);
    ::unlink(temporary.c_str());
    throw_file_error("write", path, problem);
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string problem = std::string("rename failed: ") + std::strerror(errno);
    ::unlink(temporary.c_str());
    throw_file_error("write", path, problem);
  }
#else
  temporary = temporary_name_for(path);
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) throw_file_error("write", path, "cannot create a temporary file");
    out.write(bytes, static_cast<std::streamsize>(size));
    out.flush();
    if (!out) {
      out.close();
      std::error_code ignored;
      std::filesystem::remove(temporary, ignored);
      throw_file_error("write", path, "write failed");
    }
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    throw_file_error("write", path, "rename failed: " + error.message());
  }
#endif
}

/// write_file_atomically for a byte container (std::string or std::vector of bytes).
template <class Bytes>
void write_file_atomically(const std::string& path, const Bytes& bytes) {
  write_file_atomically(path, bytes.data(), bytes.size() * sizeof(bytes[0]));
}

/// Reads the whole of `path` (in chunks until end of file, so pipes and /proc files work too).
/// Throws std::runtime_error naming the file when it is a directory, cannot be opened or read, or is
/// larger than `max_bytes` (a guard against reading a device or a huge file by mistake).
inline std::vector<std::uint8_t> read_file(const std::string& path, std::uint64_t max_bytes = (1ull << 34)) {
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) throw_file_error("read", path, "is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_file_error("read", path, "cannot open the file");
  std::vector<std::uint8_t> bytes;
  constexpr std::size_t chunk = 1 << 16;
  while (in) {
    const std::size_t old_size = bytes.size();
    if (old_size > max_bytes) throw_file_error("read", path, "file too large (more than " + std::to_string(max_bytes) + " bytes)");
    bytes.resize(old_size + chunk);
    in.read(reinterpret_cast<char*>(bytes.data() + old_size), static_cast<std::streamsize>(chunk));
    bytes.resize(old_size + static_cast<std::size_t>(in.gcount()));
  }
  if (in.bad() || !in.eof()) throw_file_error("read", path, "read failed");
  if (bytes.size() > max_bytes) throw_file_error("read", path, "file too large (more than " + std::to_string(max_bytes) + " bytes)");
  return bytes;
}

}  // namespace maskpos::detail
