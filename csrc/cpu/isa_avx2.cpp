// The CPU kernels for the avx2 instruction set: setup.py compiles this file with
// -DCPU_CAPABILITY=AVX2 and the matching -m flags; ops.cpp picks one at run time.
#include "cpu/isa_impl.h"
