// Hot CPU row loops are compiled three times -- AVX-512, AVX2 + FMA, baseline x86-64 -- and the best one for the
// machine is chosen when the library loads (GCC's target_clones; ATen does the same for its own kernels with its
// CPU_CAPABILITY dispatch). Elsewhere (other compilers or architectures) it is a plain function.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define CAPXAI_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CAPXAI_SIMD_CLONES
#endif
