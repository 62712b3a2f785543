/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* The BPF target has no architecture headers of its own: as Kbuild does for
 * an architecture without one, the asm-generic header stands in. */
#include <asm-generic/posix_types.h>
