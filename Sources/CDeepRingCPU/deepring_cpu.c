// CPUID and XGETBV, asked once by the engine before it calls into a kernel target compiled for a newer CPU.
// No compiler runtime (no __builtin_cpu_supports): only the instructions themselves.
#include "deepring_cpu.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>

static int has_bits(unsigned value, unsigned bits) { return (value & bits) == bits; }

static unsigned long long xcr0(void) {
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((unsigned long long)edx << 32) | eax;
}

int deepring_cpu_runs_haswell(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    // ECX: FMA (12), MOVBE (22), POPCNT (23), OSXSAVE (27), AVX (28), F16C (29).
    if (!has_bits(c, (1u << 12) | (1u << 22) | (1u << 23) | (1u << 27) | (1u << 28) | (1u << 29))) return 0;
    if (!has_bits((unsigned)xcr0(), 0x6)) return 0;   // XMM and YMM state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    // EBX: BMI1 (3), AVX2 (5), BMI2 (8).
    if (!has_bits(b, (1u << 3) | (1u << 5) | (1u << 8))) return 0;
    if (!__get_cpuid(0x80000001, &a, &b, &c, &d)) return 0;
    return has_bits(c, 1u << 5);                        // LZCNT (ABM)
}

int deepring_cpu_runs_znver4(void) {
    unsigned a, b, c, d;
    if (!deepring_cpu_runs_haswell()) return 0;
    if (!has_bits((unsigned)xcr0(), 0xE6)) return 0;  // XMM, YMM, opmask, ZMM_Hi256, Hi16_ZMM state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    // EBX: AVX512F (16), DQ (17), IFMA (21), CD (28), BW (30), VL (31).
    if (!has_bits(b, (1u << 16) | (1u << 17) | (1u << 21) | (1u << 28) | (1u << 30) | (1u << 31))) return 0;
    // ECX: VBMI (1), VBMI2 (6), GFNI (8), VAES (9), VPCLMULQDQ (10), VNNI (11), BITALG (12), VPOPCNTDQ (14).
    if (!has_bits(c, (1u << 1) | (1u << 6) | (1u << 8) | (1u << 9) | (1u << 10) | (1u << 11) | (1u << 12) | (1u << 14))) return 0;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
    return has_bits(a, 1u << 5);                        // AVX512_BF16
}

int deepring_cpu_identity(char *vendor) {
    unsigned a, b, c, d;
    vendor[0] = 0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return -1;
    unsigned words[3] = { b, d, c };
    for (int i = 0; i < 12; i++) vendor[i] = (char)((words[i / 4] >> (8 * (i % 4))) & 0xFF);
    vendor[12] = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return -1;
    unsigned family = (a >> 8) & 0xF, model = (a >> 4) & 0xF;
    if (family == 0xF) family += (a >> 20) & 0xFF;
    if (family == 0x6 || family >= 0xF) model |= ((a >> 16) & 0xF) << 4;
    return (int)(family * 256 + model);
}

#else
int deepring_cpu_identity(char *vendor) { vendor[0] = 0; return -1; }
int deepring_cpu_runs_haswell(void) { return 0; }
int deepring_cpu_runs_znver4(void) { return 0; }
#endif
