// The CPU kernels for the avx512 instruction set: setup.py compiles this file with
// -DCPU_CAPABILITY=AVX512 and the matching -m flags; ops.cpp picks one at run time.
#include "cpu/isa_impl.h"
