// The CPU kernels for the default instruction set: setup.py compiles this file with
// -DCPU_CAPABILITY=DEFAULT and the matching -m flags; ops.cpp picks one at run time.
#include "cpu/isa_impl.h"
