// Test-only CUDA emulation (tests/emulated): the driver executable. Usage:
//   lro_emu <command> key=value ...
// runs one registered command (drivers/<family>.cpp) under a watchdog (key timeout, seconds). On success it
// exits 0 after printing "launch <kernel> <grid> <block>" per kernel launch and "status <code>" per
// launcher call on stdout; an emulation error (deadlock, timeout) exits 86, a sanitizer report 1, a usage
// error 2, each with a message on stderr.
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <map>

#include "driver.h"

// No leak checking: see DeviceMatrix (driver.h).
extern "C" const char* __asan_default_options() { return "detect_leaks=0:halt_on_error=1:abort_on_error=0"; }
extern "C" const char* __ubsan_default_options() { return "print_stacktrace=1:halt_on_error=1"; }

namespace lro_emu {
namespace driver {
namespace {

std::map<std::string, Command>& commands() {
  static std::map<std::string, Command> table;
  return table;
}

}  // namespace

void die(const char* format, ...) {
  std::fprintf(stderr, "lro_emu driver: ");
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fputc('\n', stderr);
  std::exit(2);
}

Args::Args(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {
    const char* eq = std::strchr(argv[i], '=');
    if (eq == nullptr) die("argument '%s' is not key=value", argv[i]);
    values_[std::string(argv[i], static_cast<std::size_t>(eq - argv[i]))] = eq + 1;
  }
}

bool Args::has(const std::string& key) const { return values_.count(key) > 0; }

std::string Args::text(const std::string& key) const {
  const auto it = values_.find(key);
  if (it == values_.end()) die("missing argument '%s'", key.c_str());
  used_.insert(key);
  return it->second;
}

int64_t Args::integer(const std::string& key) const {
  const std::string s = text(key);
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0) die("argument %s=%s is not an int64", key.c_str(), s.c_str());
  return v;
}

uint64_t Args::unsigned64(const std::string& key) const {
  const std::string s = text(key);
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (s.empty() || s[0] == '-' || *end != '\0' || errno != 0) {
    die("argument %s=%s is not a uint64", key.c_str(), s.c_str());
  }
  return v;
}

double Args::real(const std::string& key) const {
  const std::string s = text(key);
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0') die("argument %s=%s is not a number", key.c_str(), s.c_str());
  return v;
}

void Args::check_all_used() const {
  for (const auto& kv : values_) {
    if (!used_.count(kv.first)) die("argument '%s' was not used by the command", kv.first.c_str());
  }
}

void read_bytes(const std::string& path, void* out, std::size_t bytes) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) die("cannot open %s", path.c_str());
  const std::size_t got = bytes > 0 ? std::fread(out, 1, bytes, f) : 0;
  const bool at_end = std::fgetc(f) == EOF;
  std::fclose(f);
  if (got != bytes || !at_end) die("%s does not hold exactly %zu bytes", path.c_str(), bytes);
}

void write_bytes(const std::string& path, const void* data, std::size_t bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) die("cannot create %s", path.c_str());
  const std::size_t put = bytes > 0 ? std::fwrite(data, 1, bytes, f) : 0;
  if (std::fclose(f) != 0 || put != bytes) die("cannot write %s", path.c_str());
}

void report_status(cudaError_t status) {
  std::printf("status\t%d\n", static_cast<int>(status));
  if (status != cudaSuccess) std::exit(0);  // no outputs: the harness reports (or expects) the status
}

bool register_command(const char* name, Command command) {
  if (!commands().emplace(name, command).second) die("command %s registered twice", name);
  return true;
}

}  // namespace driver
}  // namespace lro_emu

int main(int argc, char** argv) {
  using namespace lro_emu::driver;
  if (argc < 2) die("usage: %s <command> key=value ...", argv[0]);
  const auto it = commands().find(argv[1]);
  if (it == commands().end()) {
    std::string known;
    for (const auto& kv : commands()) known += " " + kv.first;
    die("unknown command '%s'; known:%s", argv[1], known.c_str());
  }
  const Args args(argc - 2, argv + 2);
  lro_emu::set_watchdog(static_cast<unsigned>(args.has("timeout") ? args.integer("timeout") : 600));
  it->second(args);
  args.check_all_used();
  return 0;
}
