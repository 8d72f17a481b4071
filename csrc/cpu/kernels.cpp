// The CPU kernels of one instruction set: setup.py compiles this file once per ISA with
// CPU_CAPABILITY=<NAME> and the matching -m flags, so every kernel lands in namespace
// vimd::cpu::<NAME>; ops.cpp picks one table at run time.
#include "cpu/conv.h"
#include "cpu/scan.h"
#include "cpu/update.h"

#define VIMD_STR2(x) #x
#define VIMD_STR(x) VIMD_STR2(x)

namespace vimd::cpu::CPU_CAPABILITY {
namespace {

// A table entry: the kernel in the compute type of the call, kDouble for float64 inputs (a.dbl),
// else kFloat.
template <auto kFloat, auto kDouble, typename Args>
void by_compute_type(const Args& a, int64_t begin, int64_t end) {
  if (a.dbl) kDouble(a, begin, end); else kFloat(a, begin, end);
}

}  // namespace

const KernelTable& table() {
  static const KernelTable t{VIMD_STR(CPU_CAPABILITY),
                             static_cast<int>(Vec<float>::size()),
                             static_cast<int>(Vec<double>::size()),
                             &by_compute_type<scan_fwd_impl<float>, scan_fwd_impl<double>>,
                             &by_compute_type<scan_bwd_impl<float>, scan_bwd_impl<double>>,
                             &by_compute_type<conv_fwd_impl<float>, conv_fwd_impl<double>>,
                             &by_compute_type<conv_bwd_impl<float>, conv_bwd_impl<double>>,
                             &by_compute_type<state_update_impl<float>, state_update_impl<double>>,
                             &by_compute_type<conv_update_impl<float>, conv_update_impl<double>>};
  return t;
}

}  // namespace vimd::cpu::CPU_CAPABILITY
