#ifndef C_SYSTEM_SUPPORT_H
#define C_SYSTEM_SUPPORT_H

#include <stddef.h>
#include <sys/types.h>

// What SystemSupport needs from glibc that Swift's Glibc module does not export.

/// getrandom(2), from <sys/random.h>: up to `length` random bytes into `buffer`; the count, or
/// -1 with errno set.
ssize_t farrier_getrandom(void *buffer, size_t length, unsigned int flags);

/// glibc's malloc controls, from <malloc.h>.

/// What malloc holds, in bytes (mallinfo2): in use by the program (chunks mapped on their own
/// included), and what its arenas span (in use or free).
typedef struct {
    size_t in_use;
    size_t arenas;
} farrier_heap_info;

/// Caps the number of malloc arenas (mallopt M_ARENA_MAX); returns 1 on success.
int farrier_malloc_set_arena_max(int arenas);

/// Gives free memory inside every arena back to the kernel (malloc_trim(0)); returns 1 if some was.
int farrier_malloc_trim(void);

farrier_heap_info farrier_heap_info_now(void);

#endif
