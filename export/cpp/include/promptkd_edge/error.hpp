// promptkd-edge's one exception type: what() is one line naming what is wrong and what to do, the same line the
// Python runtime prints for the same bundle or input (pkd-classify prints it as "error: <line>" and exits 2).
#pragma once

#include <stdexcept>
#include <string>

namespace pkd {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& line) : std::runtime_error(line) {}
};

}  // namespace pkd
