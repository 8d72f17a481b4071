// The CPU kernels of one instruction set: setup.py compiles this file once per ISA with
// CPU_CAPABILITY=<NAME> and the matching -m flags, so every kernel lands in namespace
// vimd::cpu::<NAME>; ops.cpp picks one table at run time.
#include "cpu/conv.h"
#include "cpu/scan.h"
#include "cpu/update.h"

#define VIMD_STR2(x) #x
#define VIMD_STR(x) VIMD_STR2(x)

namespace vimd::cpu::CPU_CAPABILITY {

const KernelTable& table() {
  static const KernelTable t{VIMD_STR(CPU_CAPABILITY), static_cast<int>(Vec<float>::size()),
                             static_cast<int>(Vec<double>::size()), &scan_fwd, &scan_bwd,
                             &conv_fwd, &conv_bwd, &state_update,
                             &conv_update};
  return t;
}

}  // namespace vimd::cpu::CPU_CAPABILITY
