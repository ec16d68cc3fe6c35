#ifndef DEEPRING_CPU_H
#define DEEPRING_CPU_H

/// 1 when this CPU and the operating system run AVX2 and FMA code (what `-target-cpu haswell` emits:
/// AVX, AVX2, FMA, F16C, BMI1, BMI2, LZCNT, MOVBE, POPCNT, and the OS saves ymm state), else 0.
int deepring_cpu_runs_haswell(void);

/// 1 when this CPU and the operating system run the AVX-512 code `-target-cpu znver4` emits (the Haswell set plus
/// AVX-512 F, CD, BW, DQ, VL, IFMA, VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ, BF16, GFNI, VAES, VPCLMULQDQ, and the
/// OS saves the opmask and zmm state), else 0.
int deepring_cpu_runs_znver4(void);

/// The CPU's identity for benchmark reports: writes the vendor string (12 characters, e.g. "AuthenticAMD") and
/// NUL into `vendor` (at least 13 bytes) and returns the display family × 256 + display model (CPUID leaf 1, with the
/// extended family and model folded in as the vendors document), or -1 where CPUID is unavailable. (What a family
/// and model mean for the kernels is said once, in `ISA.cpuIdentity`.)
int deepring_cpu_identity(char *vendor);

#endif
