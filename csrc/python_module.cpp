// The Python module entry point of lowrank_ops._C. Only setup.py compiles this file: the ops register
// when the library loads, so `import lowrank_ops._C` needs no Python API beyond an empty module, and the
// CMake-built library for C++/libtorch users stays free of Python.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
