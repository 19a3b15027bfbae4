#pragma once
// Functions marked CUSENSE_HD compile for host and device, so the CPU backend and the CUDA
// kernels apply the very same operator code.
#if defined(__CUDACC__)
#define CUSENSE_HD __host__ __device__ __forceinline__
#else
#define CUSENSE_HD inline
#endif
