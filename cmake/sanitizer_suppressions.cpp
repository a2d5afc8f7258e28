// Linked into every program of a -DMASKPOS_SANITIZE=ON build (see CMakeLists.txt).
//
// LeakSanitizer reports as leaks the font cache that fontconfig (called by cairo when a figure draws
// text) keeps for the life of the process on purpose; it is not maskpos memory. Suppress only that
// library, so any leak of maskpos's own still fails the run.
extern "C" const char* __lsan_default_suppressions();
extern "C" const char* __lsan_default_suppressions() { return "leak:libfontconfig.so\n"; }
