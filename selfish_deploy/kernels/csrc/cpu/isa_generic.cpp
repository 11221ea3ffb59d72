// The kernels for any CPU (the compiler's baseline instruction set).
#define ISA_NS generic
#include "kernels.inc"
