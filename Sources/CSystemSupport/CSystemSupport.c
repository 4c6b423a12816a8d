#include "CSystemSupport.h"

#include <malloc.h>
#include <sys/random.h>

int farrier_malloc_set_arena_max(int arenas) { return mallopt(M_ARENA_MAX, arenas); }

int farrier_malloc_trim(void) { return malloc_trim(0); }

farrier_heap_info farrier_heap_info_now(void) {
    struct mallinfo2 m = mallinfo2();
    farrier_heap_info info = {.in_use = m.uordblks + m.hblkhd, .arenas = m.arena};
    return info;
}

ssize_t farrier_getrandom(void *buffer, size_t length, unsigned int flags) {
    return getrandom(buffer, length, flags);
}
