// The header compiles as C++, included before the standard library headers
// (a declaration in it that clashes with theirs would fail here).
#include "dreamos_bridge.h"

#include <cstdlib>
#include <memory>
#include <string>

int main() {
    std::string version = dreamos_version();
    std::unique_ptr<char, void (*)(char *)> none(nullptr, dreamos_string_free);
    return version.empty() ? EXIT_FAILURE : EXIT_SUCCESS;
}
